"""Embedder: texts -> sentence embeddings with a JinaBERT model, fast by construction.

`encode` tokenizes everything once, sorts the sequences by length (longest first, so an out-of-memory
shows on the first batch), cuts them into batches by a token budget (batch_size × a typical length: many
short texts or a few long ones per batch, never a fixed count), runs each batch as one packed, unpadded
stream (the model's "bembed" path: no padding is ever computed) under `torch.inference_mode` and, on GPU,
bf16 (or fp16) autocast, mean-pools in float32 and puts the rows back in input order. A model whose
`attention_impl` is "reference" gets padded batches instead (that path needs them).

Inputs, as documented behaviour:
- "" gives the embedding of the special tokens alone (`<s></s>`); whitespace-only text gives that of its
  whitespace tokens with the specials; single tokens and any script the byte-level tokenizer covers are
  ordinary inputs.
- A text longer than max_length tokens (specials included) is cut to max_length, with ONE warning per call
  naming how many texts were cut; `truncate=False` instead splits it into windows of max_length tokens
  (each with the specials and the prompt) and returns the mean over all tokens of all windows.
- A non-string item raises TypeError naming its index; a single string returns one (dim,) row.

Prompts: `prompts` maps names to prefixes (E5's {"query": "query: ", "document": "passage: "}); they are
saved in the model folder as sentence-transformers' `config_sentence_transformers.json`, so the same
folder gives the same prompts to both libraries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import numbers
import os
import statistics
import threading
from pathlib import Path

import numpy as np
import torch

from . import late_chunking, st_folder
from .model import JinaBertModel
from .model.pooling import mean_pool_packed, normalize
from .quantize import PRECISIONS, quantize_embeddings

logger = logging.getLogger(__name__)

QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # the names sentence-transformers tries, in its order
TYPICAL_LENGTH_CAP = 512  # the token budget assumes at most this "typical" length, so 8k documents go few at a time


def _positive_int(value, name: str, minimum: int = 1) -> int:
    # numbers.Integral: numpy integers (from a grid or a cumsum) are ints to a user; a bool is not
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return texts


def named_prompt(prompts: dict[str, str], prompt_name: str) -> str | None:
    """The prompt `prompt_name` names among `prompts`. "document", "passage" and "corpus" stand for one another:
    the name asked for first, where its prompt is not empty (sentence-transformers 6 saves an empty "document"
    beside the "passage" of an E5-style folder). A query or document name the model has no prompt for is no prompt
    (""): evaluation code always passes one. None for any other name it lacks."""
    if prompt_name in DOCUMENT_PROMPT_NAMES:
        alias = next((name for name in (prompt_name, *DOCUMENT_PROMPT_NAMES) if prompts.get(name)), None)
        return prompts[alias] if alias else ""
    if prompt_name in prompts:
        return prompts[prompt_name]
    return "" if prompt_name in QUERY_PROMPT_NAMES else None


@contextlib.contextmanager
def _unicode_named(texts: list[str], name: str):
    """Around a tokenizer call: its TypeError on text that is not valid Unicode (a lone surrogate: "TextEncodeInput
    must be ...") names no text; a ValueError naming `name` (and the row, for several) and the character instead."""
    try:
        yield
    except TypeError:
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                where = f"{name}[{i}]" if len(texts) > 1 or name == "texts" else name
                raise ValueError(f"{where} is not valid Unicode ({exc.reason} at character {exc.start}, prompt "
                                 "included)") from None
        raise


def _wants_token_states(output_value: str, precision: str, truncate: bool) -> bool:
    """Whether encode returns token states (else pooled rows), refusing what it cannot give with them."""
    if output_value not in ("sentence_embedding", "token_embeddings"):
        raise ValueError(f"output_value must be 'sentence_embedding' or 'token_embeddings', got {output_value!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    tokens = output_value == "token_embeddings"
    if tokens and not truncate:
        raise ValueError("output_value='token_embeddings' needs truncate=True: a text encoded in windows has no "
                         "single sequence of token states")
    if tokens and precision != "float32":  # quantizing needs a batch of pooled rows (its ranges come from them)
        raise ValueError(f"precision={precision!r} quantizes sentence embeddings: output_value="
                         "'token_embeddings' gives float32 token states")
    return tokens


def _pool_windows(pooled: torch.Tensor, lengths: list[int], owners: list[int], n_texts: int) -> torch.Tensor:
    """Each text's row from the mean-pooled rows of its windows: their mean weighted by the windows' token
    counts, which is the mean over all of the text's tokens."""
    weights = torch.tensor(lengths, dtype=torch.float32, device=pooled.device)
    owner = torch.tensor(owners, device=pooled.device)
    sums = pooled.new_zeros(n_texts, pooled.shape[1]).index_add_(0, owner, pooled * weights[:, None])
    return sums / pooled.new_zeros(n_texts).index_add_(0, owner, weights)[:, None]


def _texts_aliases(method):
    """Accept sentence-transformers' names for `texts` as keywords: `inputs` (6.x) and `sentences` (before)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        for alias in ("inputs", "sentences"):
            if alias in kwargs:
                if args or "texts" in kwargs:
                    raise TypeError(f"{method.__name__}: give the texts once (texts, inputs or sentences)")
                kwargs["texts"] = kwargs.pop(alias)
        return method(self, *args, **kwargs)
    return wrapper


# Encode calls running per model (by id), with the model's mode before the first of them: see _eval_mode.
_MODE_LOCK = threading.Lock()
_ENCODING: dict[int, tuple[int, bool]] = {}


class Embedder:
    """A JinaBERT model, its tokenizer and its prompts, with the sentence-transformers `encode` keywords.

    model: a `JinaBertModel` (for a `JinaBertForMaskedLM` pass its `.bert`); tokenizer: the model's
    Hugging Face tokenizer (a fast one for `encode_chunks`); prompts: name -> prefix; default_prompt_name:
    the prompt `encode` applies when given none; max_seq_length: the tokens (specials included) `encode`
    keeps when given no max_length (default: the config's max_position_embeddings); normalize_embeddings:
    whether `encode` L2-normalises when not told; autocast_dtype: the autocast dtype on GPU ("auto": bf16
    where supported, else fp16; None: run in the model's own dtype). `matryoshka_dims`: the widths the model
    was trained to be cut to (`truncate_dim`), from its config's record; () when it has none.
    """

    def __init__(self, model: JinaBertModel, tokenizer, *, prompts: dict[str, str] | None = None,
                 default_prompt_name: str | None = None, max_seq_length: int | None = None,
                 normalize_embeddings: bool = True, autocast_dtype: torch.dtype | str | None = "auto"):
        if not isinstance(model, JinaBertModel):
            hint = " (for a JinaBertForMaskedLM pass its .bert)" if hasattr(model, "bert") else ""
            raise TypeError(f"model must be a JinaBertModel{hint}, got {type(model).__name__}")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        prompts = dict(prompts or {})
        for name, value in prompts.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"prompts must map str names to str prefixes, got {name!r}: {value!r}")
        if default_prompt_name is not None and default_prompt_name not in prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} is not one of the prompts {sorted(prompts)}")
        if autocast_dtype not in ("auto", None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be 'auto', None, torch.bfloat16 or torch.float16, "
                             f"got {autocast_dtype!r}")
        self.model = model  # its mode stays the caller's: encoding switches to eval() only while it runs
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.default_prompt_name = default_prompt_name
        if max_seq_length is None:  # as sentence-transformers: the tokenizer's limit counts too
            max_seq_length = min(model.config.max_position_embeddings,
                                 getattr(tokenizer, "model_max_length", None) or model.config.max_position_embeddings)
        self.max_seq_length = max_seq_length
        if not isinstance(normalize_embeddings, (bool, np.bool_)):  # bool(None) was a silent False
            raise TypeError(f"normalize_embeddings must be a bool, got {normalize_embeddings!r}")
        self.normalize_embeddings = bool(normalize_embeddings)
        self.autocast_dtype = autocast_dtype
        self.name = getattr(model.config, "name_or_path", None) or "bembed"
        # the widths its last contrastive stage trained the embeddings to be cut to (truncate_dim); () if none
        self.matryoshka_dims = tuple(getattr(model.config, "matryoshka_dims", None) or ())

    # ---- loading and saving -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device | None = None, dtype=None,
                        attention_impl: str | None = None, **kwargs) -> "Embedder":
        """Load model, tokenizer and prompts from a local folder (bembed's `save_pretrained`, a published
        JinaBERT folder, or a sentence-transformers folder, its transformer in the folder or in a module folder
        such as `0_Transformer/`). Never downloads. device: where to run (default:
        CUDA when available); dtype: the model weights' dtype (default float32); attention_impl:
        "bembed" (default) or "reference". Other keywords go to `Embedder(...)`; prompts given there are
        merged over the folder's, name by name."""
        from transformers import AutoTokenizer

        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"path {str(path)!r} is not a local folder (bembed never downloads models)")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {str(device)!r} is not a torch device ({exc})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: this torch has no usable CUDA device")
        overrides = {"attention_impl": attention_impl} if attention_impl is not None else {}
        model_folder = st_folder.transformer_folder(folder)  # the folder, or its 0_Transformer/ (older layout)
        model = JinaBertModel.from_pretrained(model_folder, dtype=dtype, device=device, **overrides)
        st_folder.check_tokenizer(model_folder)
        tokenizer = AutoTokenizer.from_pretrained(str(model_folder), local_files_only=True)
        kwargs = st_folder.embedder_settings(folder, kwargs)
        embedder = cls(model, tokenizer, **kwargs)
        embedder.name = folder.name
        return embedder

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the model (config.json, model.safetensors), the tokenizer, the prompts, max_seq_length and
        normalize_embeddings (a Normalize module or none) to `path` as a sentence-transformers folder:
        `SentenceTransformer(path)` then gives the same vectors with the same prompts (it reads prompts only
        from a folder with its modules.json)."""
        from .model.export import export_sentence_transformers

        return export_sentence_transformers(self.model, self.tokenizer, path, max_seq_length=self.max_seq_length,
                                            normalize=self.normalize_embeddings, prompts=self.prompts,
                                            default_prompt_name=self.default_prompt_name)

    # ---- properties ---------------------------------------------------------------------------------

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        # checked where it is set (as sentence-transformers users do: `model.max_seq_length = 256`), not at the
        # next encode under the name of an argument the caller never passed
        self._max_seq_length = _positive_int(value, "max_seq_length", self._special_count() + 1)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def get_sentence_embedding_dimension(self) -> int:
        """sentence-transformers' name for `dim`."""
        return self.dim

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        """(n, m) float32 cosine similarities of two sets of embeddings (arrays or tensors, (n, dim) or (dim,), or
        lists of row tensors), sentence-transformers' `similarity` with its default cosine function."""
        from .search import as_matrix

        first, second = (as_matrix(e, name).float() for e, name in ((embeddings1, "embeddings1"),
                                                                    (embeddings2, "embeddings2")))
        return normalize(first) @ normalize(second).T

    # ---- encoding -----------------------------------------------------------------------------------

    @_texts_aliases
    def encode(self, texts, batch_size: int = 32, max_length: int | None = None,
               normalize_embeddings: bool | None = None, prompt: str | None = None, prompt_name: str | None = None,
               show_progress_bar: bool | None = None, convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               device=None, precision: str = "float32", output_value: str = "sentence_embedding", *,
               truncate: bool = True, truncate_dim: int | None = None):
        """Embed `texts` (a str or a sequence of str) -> (n, dim) float32 rows in input order ((dim,) for a
        single str): a numpy array, a tensor on the model's device (convert_to_tensor, which wins), or a list
        of 1-D tensors (both False). max_length and normalize_embeddings default to the Embedder's
        max_seq_length and normalize_embeddings (from a folder: its sentence-transformers settings). prompt:
        a prefix for every text; prompt_name: a configured prompt ("query"/"document" are ignored when the
        model has none, so eval code may always pass them; with prompt too, prompt wins, with a warning);
        device: move the model there first (it stays); truncate_dim: keep the first truncate_dim dimensions of
        each row, before normalisation (Matryoshka models); precision: "int8", "uint8", "binary" or "ubinary"
        quantizes the rows after normalisation (`bembed.quantize_embeddings`; int8/uint8 ranges come from this
        call's rows, so one text raises ValueError); output_value="token_embeddings": a list of (tokens, dim)
        float32 tensors, the last layer's states of each text's tokens with its specials (as
        sentence-transformers; needs truncate=True). `inputs=` and `sentences=` are accepted for texts. See the
        module docstring for long texts (`truncate`), empty texts and bad items."""
        tokens = _wants_token_states(output_value, precision, truncate)
        single = isinstance(texts, str)
        texts = _check_texts([texts] if single else texts)
        batch_size = _positive_int(batch_size, "batch_size")
        if truncate_dim is not None:
            truncate_dim = _positive_int(truncate_dim, "truncate_dim")
        max_length = self._max_length(max_length)
        prefix = self._resolve_prompt(prompt, prompt_name)
        if device is not None:
            self.model.to(device)
        if texts:
            ids, lead, trail = self._tokenize([prefix + t for t in texts])
            if prefix and not truncate:  # every window of a long text starts with the prompt, not just the first
                lead = self._with_prompt(prefix, ids, lead)
            pieces, owners, cut = self._fit(ids, lead, trail, max_length, truncate)
            if cut:
                logger.warning("%d of %d texts are longer than max_length=%d tokens and were %s", cut, len(texts),
                               max_length, "truncated" if truncate else "encoded in windows and averaged")
            if tokens:
                # ordinary tensors, not inference-mode ones: the caller may train a head on them or edit them
                states = [s.clone() for s in self._embed(pieces, batch_size, show_progress_bar, tokens=True)]
                return states[0] if single else states
            pooled = self._embed(pieces, batch_size, show_progress_bar)
            if len(pieces) != len(texts):
                pooled = _pool_windows(pooled, [len(p) for p in pieces], owners, len(texts))
        elif tokens:
            return []
        else:
            pooled = torch.zeros(0, self.dim, device=self.device)
        pooled = pooled[:, :truncate_dim]
        if self._normalizes(normalize_embeddings):
            pooled = normalize(pooled)
        pooled = quantize_embeddings(pooled, precision)  # float32: unchanged
        return self._convert(pooled[0] if single else pooled, convert_to_numpy, convert_to_tensor)

    @_texts_aliases
    def encode_query(self, texts, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """`encode` with the model's query prompt (the first of "query" it has; none, not the default prompt,
        if it has none), unless a prompt or prompt_name is given (as in sentence-transformers)."""
        return self._encode_as(QUERY_PROMPT_NAMES, texts, prompt_name, prompt, **kwargs)

    @_texts_aliases
    def encode_document(self, texts, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """`encode` with the model's document prompt ("document", "passage" or "corpus"; none, not the default
        prompt, if absent), unless a prompt or prompt_name is given (as in sentence-transformers)."""
        return self._encode_as(DOCUMENT_PROMPT_NAMES, texts, prompt_name, prompt, **kwargs)

    def _encode_as(self, names: tuple[str, ...], texts, prompt_name, prompt, **kwargs):
        if prompt_name is None and prompt is None:
            prompt_name = self._named_prompt(names)
            if prompt_name is None:
                prompt = ""  # as sentence-transformers: never default_prompt_name (a document prompt on queries)
        return self.encode(texts, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_chunks(self, document: str, chunk_spans=None, chunk_size: int | None = None, *,
                      max_length: int | None = None, normalize_embeddings: bool | None = None,
                      prompt: str | None = None,
                      prompt_name: str | None = None, convert_to_numpy: bool = True,
                      convert_to_tensor: bool = False, return_spans: bool = False):
        """Late chunking: encode `document` once (up to max_length tokens) and mean-pool each chunk's tokens
        -> (n_chunks, dim). Give chunk_spans, character (start, end) pairs, or chunk_size, a number of tokens
        per chunk. return_spans: also return the character spans (useful with chunk_size). A document cut at
        max_length warns once; a chunk wholly beyond the cut raises ValueError. See bembed/late_chunking.py
        for how characters map to tokens."""
        if not isinstance(document, str):
            raise TypeError(f"document must be a str, got {type(document).__name__}")
        if not document.strip():
            raise ValueError("document is empty or whitespace-only: there is nothing to chunk")
        if (chunk_spans is None) == (chunk_size is None):
            raise ValueError("give exactly one of chunk_spans (character spans) and chunk_size (tokens per chunk)")
        if chunk_size is not None:
            chunk_size = _positive_int(chunk_size, "chunk_size")
        else:
            chunk_spans = late_chunking.check_spans(chunk_spans, len(document))
        max_length = self._max_length(max_length)
        if not getattr(self.tokenizer, "is_fast", False):
            raise TypeError("encode_chunks needs a fast (Rust) tokenizer for character offsets")
        prefix = self._resolve_prompt(prompt, prompt_name)
        ids, offsets, lead, text_end = self._document_tokens(document, prefix, max_length)
        if chunk_size is not None:
            chunk_spans = late_chunking.size_spans(offsets, lead, text_end, len(prefix), chunk_size)
        ranges = late_chunking.token_ranges(offsets, lead, text_end, len(prefix), chunk_spans)
        device = self.device
        with torch.inference_mode(), self._eval_mode(), self._autocast(device):
            states = self._embed_batch([ids], device, tokens=True)[0]
            pooled = late_chunking.pool_ranges(states, ranges)
        pooled = pooled.clone()  # an ordinary tensor, not an inference-mode one, for the caller
        if self._normalizes(normalize_embeddings):
            pooled = normalize(pooled)
        vectors = self._convert(pooled, convert_to_numpy, convert_to_tensor)
        return (vectors, chunk_spans) if return_spans else vectors

    # ---- internals ----------------------------------------------------------------------------------

    def _document_tokens(self, document: str, prefix: str, max_length: int):
        """(ids, character offsets, lead, text_end) of prefix + document cut to max_length tokens: the tokens
        lead:text_end are the document's own. The prompt's tokens are a prefix like the leading specials: they
        join the first chunk, never a span."""
        with _unicode_named([prefix + document], "document"):
            encoded = self.tokenizer(prefix + document, add_special_tokens=True, truncation=False, verbose=False,
                                     return_special_tokens_mask=True, return_offsets_mapping=True)
        ids, offsets, special = encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"]
        lead = self._leading(special)
        trail = self._leading(special[::-1])
        while lead < len(ids) - trail and offsets[lead][1] <= len(prefix) and prefix:
            lead += 1
        keep = min(len(ids) - trail, max_length - trail)
        if keep <= lead:
            raise ValueError(f"max_length={max_length} leaves no token of the document after the {lead} tokens of the "
                             "prompt and special tokens")
        if keep < len(ids) - trail:
            logger.warning("the document has %d tokens, more than max_length=%d: chunks are pooled from the first "
                           "%d", len(ids), max_length, max_length)
            ids, offsets = ids[:keep] + ids[len(ids) - trail:], offsets[:keep] + offsets[len(offsets) - trail:]
        return ids, offsets, lead, keep

    def _special_count(self) -> int:
        return self.tokenizer.num_special_tokens_to_add() if hasattr(self.tokenizer, "num_special_tokens_to_add") else 0

    def _max_length(self, max_length: int | None) -> int:
        return _positive_int(self.max_seq_length if max_length is None else max_length, "max_length",
                             self._special_count() + 1)

    def _normalizes(self, normalize_embeddings: bool | None) -> bool:
        if normalize_embeddings is None:
            return self.normalize_embeddings
        if not isinstance(normalize_embeddings, (bool, np.bool_)):  # the string "false" was a silent True
            raise TypeError(f"normalize_embeddings must be a bool or None, got {normalize_embeddings!r}")
        return bool(normalize_embeddings)

    def _named_prompt(self, names: tuple[str, ...]) -> str | None:
        """The first of `names` with a prompt that is not empty (sentence-transformers 6 saves an empty "document"
        beside the "passage" of an E5-style folder: the passage prompt is the model's document prompt)."""
        return next((name for name in names if self.prompts.get(name)), None)

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str:
        if prompt is not None and prompt_name is not None:
            logger.warning("both prompt and prompt_name were given: prompt_name %r is ignored in favour of prompt "
                           "(as sentence-transformers does)", prompt_name)
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
            return prompt
        if prompt_name is None:
            return self.prompts[self.default_prompt_name] if self.default_prompt_name else ""
        found = named_prompt(self.prompts, prompt_name)
        if found is None:
            raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts {sorted(self.prompts)}")
        return found

    @staticmethod
    def _leading(mask) -> int:
        count = 0
        while count < len(mask) and mask[count]:
            count += 1
        return count

    def _tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[int], list[int]]:
        """Full (untruncated) token ids with specials, and the counts of leading and trailing specials."""
        with _unicode_named(texts, "texts"):
            encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False,
                                     return_special_tokens_mask=True, return_attention_mask=False)
        ids, masks = encoded["input_ids"], encoded["special_tokens_mask"]
        lead = [self._leading(m) for m in masks]
        trail = [min(self._leading(m[::-1]), len(m) - n) for m, n in zip(masks, lead)]
        return ids, lead, trail

    def _with_prompt(self, prefix: str, ids: list[list[int]], lead: list[int]) -> list[int]:
        """The counts of leading specials extended by each sequence's prompt tokens: those it has in common with
        the prompt tokenized alone (the prompt's last token may merge with the text's first)."""
        prompt = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        counts = []
        for seq, a in zip(ids, lead):
            n = 0
            while n < len(prompt) and a + n < len(seq) and seq[a + n] == prompt[n]:
                n += 1
            counts.append(a + n)
        return counts

    @staticmethod
    def _fit(ids, lead, trail, max_length: int, truncate: bool):
        """Sequences of at most max_length tokens: truncated, or windows of the text between the leading
        tokens (specials, and the prompt when windowing) and the trailing specials, each window with both.
        Returns (pieces, owner index per piece, number of texts that were too long)."""
        pieces, owners, cut = [], [], 0
        for i, (seq, a, b) in enumerate(zip(ids, lead, trail)):
            if len(seq) <= max_length:
                pieces.append(seq)
                owners.append(i)
                continue
            cut += 1
            head, body, tail = seq[:a], seq[a:len(seq) - b], seq[len(seq) - b:]
            window = max_length - a - b
            if window < 1:
                raise ValueError(f"max_length={max_length} leaves no room for text in a window after the prompt "
                                 f"and special tokens ({a + b} tokens)")
            starts = [0] if truncate else range(0, len(body), window)
            for start in starts:
                pieces.append(head + body[start:start + window] + tail)
                owners.append(i)
        return pieces, owners, cut

    def _batches(self, lengths: list[int], batch_size: int) -> list[list[int]]:
        """Indices sorted longest first, grouped so each batch holds at most batch_size × typical-length
        tokens (a sequence longer than that goes alone)."""
        typical = min(int(statistics.median(lengths)), TYPICAL_LENGTH_CAP)
        budget = batch_size * max(typical, 1)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches, current, tokens = [], [], 0
        for i in order:
            if current and tokens + lengths[i] > budget:
                batches.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += lengths[i]
        batches.append(current)
        return batches

    @contextlib.contextmanager
    def _eval_mode(self):
        # A training loop that evaluates through an Embedder keeps its model in train(): dropout must be off
        # while encoding (sentence-transformers' encode does the same), and the loop gets its mode back. Calls
        # from several threads share the model: the mode goes back when the last of them ends, not when the
        # first does (which would turn dropout on under the others).
        key = id(self.model)
        with _MODE_LOCK:
            running, training = _ENCODING.get(key, (0, self.model.training))
            _ENCODING[key] = (running + 1, training)
            self.model.eval()
        try:
            yield
        finally:
            with _MODE_LOCK:
                running, training = _ENCODING.pop(key)
                if running > 1:
                    _ENCODING[key] = (running - 1, training)
                else:
                    self.model.train(training)

    def _autocast(self, device: torch.device):
        dtype = self.autocast_dtype
        if device.type != "cuda" or dtype is None or next(self.model.parameters()).dtype != torch.float32:
            return contextlib.nullcontext()
        if dtype == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _embed(self, pieces: list[list[int]], batch_size: int, show_progress_bar: bool | None,
               tokens: bool = False):
        """(len(pieces), dim) float32 mean-pooled, unnormalised, in the order of `pieces`; with `tokens`, a
        list of each piece's (len, dim) float32 token states instead."""
        from tqdm.auto import tqdm

        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO
        device = self.device
        lengths = [len(p) for p in pieces]
        out = [None] * len(pieces) if tokens else torch.empty(len(pieces), self.dim, dtype=torch.float32,
                                                                   device=device)
        batches = self._batches(lengths, batch_size)
        bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, desc="encode", disable=not show_progress_bar)
        with torch.inference_mode(), self._eval_mode(), self._autocast(device):
            for batch in batches:
                result = self._embed_batch([pieces[i] for i in batch], device, tokens)
                if tokens:
                    for i, states in zip(batch, result):
                        out[i] = states
                else:
                    out[torch.tensor(batch, device=device)] = result
                bar.update(sum(lengths[i] for i in batch))
        bar.close()
        return out

    def _embed_batch(self, batch: list[list[int]], device: torch.device, tokens: bool = False):
        lengths = torch.tensor([len(seq) for seq in batch])
        if self.model.config.attention_impl == "bembed":
            packed = torch.tensor([t for seq in batch for t in seq], device=device)
            cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0)).to(device)
            states, _ = self.model.forward_packed(packed, cu_seqlens, int(lengths.max()))
            if tokens:
                return list(states.float().split(lengths.tolist()))
            return mean_pool_packed(states, cu_seqlens)
        # The reference path takes padded batches (pad id, attention mask), as the published remote code does.
        width = int(lengths.max())
        pad = self.model.config.pad_token_id or 0
        ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq in batch], device=device)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).to(device=device, dtype=torch.long)
        if tokens:
            last = self.model(ids, mask).last_hidden_state.float()
            return [last[i, :n] for i, n in enumerate(lengths.tolist())]
        return self.model.embed(ids, mask, normalize_embeddings=False)

    @staticmethod
    def _convert(pooled: torch.Tensor, convert_to_numpy: bool, convert_to_tensor: bool):
        if convert_to_tensor:
            return pooled
        if convert_to_numpy:
            return pooled.cpu().numpy()
        return list(pooled.unbind(0)) if pooled.dim() == 2 else pooled


def load_encoder(path: str | os.PathLike, **kwargs) -> Embedder:
    """The evaluation hook (`bembed eval --model PATH`): an Embedder for a model folder; its
    `encode(texts, prompt_name=..., batch_size=...)` is the interface of bembed/eval/encoder.py."""
    return Embedder.from_pretrained(path, **kwargs)
