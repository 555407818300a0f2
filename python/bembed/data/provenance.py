"""Which splits of `bembed data build` output a model trained on, so that evaluation refuses test documents
its training saw.

A build puts each document in a split by where a hash of its id falls in [0, 1) (split.py): with fractions
(a, b, c), train is [0, a), validation [a, a + b), test [a + b, 1). So a (fractions, split) pair is an interval of
that hash, the same for every build and every language pair (document ids are language-independent: the
English side of a help page is one document in the en-de and the en-es builds). A model that trained on one
interval has seen documents of a test split built with other fractions exactly when the two intervals overlap,
which is what changing `--split` between builds does.

Each training stage adds a record per built source it read to its model's config.json (`trained_on`), after
the records its starting model already carried; `bembed eval` compares them with the builds it evaluates on.
"""

from __future__ import annotations

import json
from pathlib import Path

from bembed.data.split import SPLITS
from bembed.files import user_path

MANIFEST = "manifest.json"
CONFIG_KEY = "trained_on"


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest.json of a build's pair folder (or one written beside files drawn from a build); None when
    there is none, or it is not bembed's (no fractions)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "fractions" in manifest and "pair" in manifest else None


def source_record(path: str | Path, split: str) -> dict | None:
    """The record of one data source: a dataset folder of a build (<root>/<pair>/<set>, the build's manifest
    beside it) read at `split`, or a file with a manifest beside it that names the split the file was drawn
    from (the quickstart's stage-1 corpus sample). None for anything else: the user's own files."""
    path = user_path(path)
    manifest = read_manifest(path.parent)
    if manifest is None:
        return None
    if not path.is_dir():
        split = manifest.get("split")
    if split not in SPLITS:
        return None
    return {"pair": manifest["pair"], "set": path.name, "split": split,
            "fractions": [float(f) for f in manifest["fractions"]]}


def records_of(sources) -> list[dict]:
    """The records of the built ones among `sources` (dicts with path and split, as in a stage's data.train)."""
    records = [source_record(source["path"], source.get("split", "train")) for source in sources]
    return [r for r in records if r is not None]


def trained_on(model_folder: str | Path) -> list[dict]:
    """The records a model folder's config.json carries ([] for a folder without one, or another model's); an
    older sentence-transformers folder keeps its config.json in 0_Transformer/."""
    from bembed.st_folder import transformer_folder

    try:
        config = json.loads((transformer_folder(model_folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return (config.get(CONFIG_KEY) or []) if isinstance(config, dict) else []


def record_training_data(config, sources) -> None:
    """Add to `config` (a model's HF config) the records of the built `sources` it is being trained on;
    records it already holds are kept, none is repeated."""
    records = list(getattr(config, CONFIG_KEY, None) or [])
    for record in records_of(sources):
        if record not in records:
            records.append(record)
    if records:
        setattr(config, CONFIG_KEY, records)


def _interval(fractions, split: str) -> tuple[float, float]:
    # the same sums split_of compares against, so equal fractions give equal boundaries
    bounds = (0.0, fractions[0], fractions[0] + fractions[1], 1.0)
    i = SPLITS.index(split)
    return bounds[i], bounds[i + 1]


def seen_test_documents(trained_on: list[dict], manifest: dict) -> list[dict]:
    """The records of `trained_on` whose documents include test documents of the build `manifest` describes."""
    test_lo, test_hi = _interval(manifest["fractions"], "test")
    seen = []
    for record in trained_on:
        lo, hi = _interval(record["fractions"], record["split"])
        if lo < hi and test_lo < test_hi and lo < test_hi and test_lo < hi:
            seen.append(record)
    return seen


def _split_option(fractions) -> str:
    return "--split " + ",".join(repr(float(f)) for f in fractions)  # repr: the exact value, so they sum to 1


def describe(record: dict) -> str:
    return f"{record['set']} ({record['split']} split of the {record['pair']} build with {_split_option(record['fractions'])})"


def held_out_conflict(records: list[dict], pair_folder: str | Path, rebuild_in_place: bool = False) -> str | None:
    """Why a model trained on `records` cannot be scored on the test split of the build in `pair_folder`
    (<root>/<pair>): what it trained on that holds test documents there, and which build would hold them all
    out — into another folder, or with `rebuild_in_place` into this one (for a run that keeps using it). None
    when nothing does, or when the folder is not a build of bembed's."""
    manifest = read_manifest(pair_folder)
    seen = seen_test_documents(records, manifest) if manifest else []
    if not seen:
        return None
    if any(r["split"] == "test" for r in seen):
        fix = "no build holds out the test split it trained on"
    else:
        # The build with the fractions of the record reaching furthest into [0, 1) starts its test split at or
        # after the end of every record (a train or validation range ends at or before its own test start).
        widest = max(seen, key=lambda r: _interval(r["fractions"], r["split"])[1])
        where = (f"--out {Path(pair_folder).parent}`, then the same command" if rebuild_in_place
                 else "--out DIR`, then `--data DIR`")
        fix = (f"a build with the split it trained on holds them out: `bembed data build --pair {manifest['pair']} "
               f"{_split_option(widest['fractions'])} {where}")
    return (f"{'; '.join(describe(r) for r in seen)} holds documents of the test split under {pair_folder} (built "
            f"with {_split_option(manifest['fractions'])}): its scores would be on text it trained on; {fix}")


def trained_on_test_split(model_folder: str | Path, pair_folder: str | Path) -> str | None:
    """held_out_conflict for the model in `model_folder` (None for a folder that carries no record)."""
    return held_out_conflict(trained_on(model_folder), pair_folder)
