"""Stage-2 monolingual pairs and stage-3 retrieval triples with BM25-mined hard negatives."""

from __future__ import annotations

from collections import Counter, defaultdict

from bembed.data.bm25 import BM25
from bembed.data.align import normalize
from bembed.data.records import Document, clean, word_count

MIN_WORDS = 3


def page_body(doc: Document) -> str:
    """A page without its title: headings repeating the title would make title → body retrieval trivial."""
    title = clean(doc.title).casefold()
    return "\n".join(p for p in doc.paragraphs if clean(p).casefold() != title)


def title_body_pairs(docs: list[Document]) -> list[dict]:
    rows = []
    for d in docs:
        body = page_body(d)
        if d.title and word_count(body) >= MIN_WORDS:
            rows.append({"anchor": d.title, "positive": body, "kind": "title_body", "lang": d.lang,
                         "source": d.source, "doc_id": d.doc_id})
    return rows


def adjacent_pairs(docs: list[Document]) -> list[dict]:
    """Consecutive paragraphs of one document (both at least MIN_WORDS words)."""
    rows = []
    for d in docs:
        paras = [p for p in d.paragraphs if word_count(p) >= MIN_WORDS]
        for first, second in zip(paras, paras[1:]):
            if normalize(first) != normalize(second):
                rows.append({"anchor": first, "positive": second, "kind": "adjacent", "lang": d.lang,
                             "source": d.source, "doc_id": d.doc_id})
    return rows


def translation_paraphrase_pairs(chapters_a: list[Document], chapters_b: list[Document]) -> list[dict]:
    """The same verse in two translations of one language (e.g. WEB ↔ BBE)."""
    b_by_id = {d.doc_id: d for d in chapters_b}
    rows = []
    for a in chapters_a:
        b = b_by_id.get(a.doc_id)
        if b is None:
            continue
        b_text = dict(zip(b.keys, b.paragraphs))
        for key, text in zip(a.keys, a.paragraphs):
            other = b_text.get(key)
            if (other and normalize(other) != normalize(text) and word_count(text) >= MIN_WORDS
                    and word_count(other) >= MIN_WORDS):
                rows.append({"anchor": text, "positive": other, "kind": "verse_paraphrase", "lang": a.lang,
                             "source": f"{a.source}|{b.source}", "doc_id": a.doc_id})
    return rows


def retrieval_triples(query_docs: list[Document], corpus_docs: list[Document], n_negatives: int) -> list[dict]:
    """query = page title (query_docs' language), positive = the same page's body (corpus_docs' language),
    negatives = the top BM25 bodies for the corpus-language title, excluding the page itself and pages with
    the same body (up to case and punctuation: help pages ship under two paths and titles). Pages whose
    title is not unique are skipped (ambiguous queries). Call once per split: negatives stay in the split."""
    def usable(docs):
        counts = Counter(d.title.casefold() for d in docs)
        return {d.doc_id: d for d in docs if d.title and counts[d.title.casefold()] == 1
                and word_count(page_body(d)) >= MIN_WORDS}

    queries, corpus = usable(query_docs), usable(corpus_docs)
    ids = [i for i in queries if i in corpus]
    if not ids:
        return []
    bodies = [page_body(corpus[i]) for i in ids]
    index = BM25(bodies)
    copies = defaultdict(set)  # a body another page repeats is not a negative of either (a false negative)
    for n, body in enumerate(bodies):
        copies[normalize(body)].add(n)
    rows = []
    for n, doc_id in enumerate(ids):
        negatives = index.top(corpus[doc_id].title, n_negatives, exclude=copies[normalize(bodies[n])])
        rows.append({"query": queries[doc_id].title, "positive": bodies[n],
                     "negatives": [bodies[j] for j in negatives], "query_lang": queries[doc_id].lang,
                     "doc_lang": corpus[doc_id].lang, "source": corpus[doc_id].source, "doc_id": doc_id})
    return rows


def mine_negatives_with_encoder(rows: list[dict], encoder, n_negatives: int, batch_size: int = 32) -> list[dict]:
    """The same triples with negatives re-mined by a model: the ``n_negatives`` positives of other rows
    closest (cosine) to each query. ``encoder`` follows bembed.eval.encoder's interface. Rows must come
    from one split and share a document language."""
    import numpy as np

    if not rows:
        return []
    texts = list(dict.fromkeys(r["positive"] for r in rows))
    copies = defaultdict(list)  # a positive's copies (up to case and punctuation) are no negatives of it
    for i, text in enumerate(texts):
        copies[normalize(text)].append(i)
    docs = np.asarray(encoder.encode(texts, prompt_name="document", batch_size=batch_size), dtype=np.float32)
    queries = np.asarray(encoder.encode([r["query"] for r in rows], prompt_name="query", batch_size=batch_size),
                         dtype=np.float32)
    docs /= np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    sims = queries @ docs.T
    out = []
    for row, sim in zip(rows, sims):
        sim[copies[normalize(row["positive"])]] = -np.inf
        best = [int(j) for j in np.argsort(-sim, kind="stable")[:n_negatives] if np.isfinite(sim[j])]
        out.append({**row, "negatives": [texts[j] for j in best]})
    return out
