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
import os
from pathlib import Path

from bembed.data.split import SPLITS

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
    path = Path(os.path.expandvars(str(path))).expanduser()
    manifest = read_manifest(path.parent)
    if manifest is None:
        return None
    if not path.is_dir():
        split = manifest.get("split")
    if split not in SPLITS:
        return None
    return {"pair": manifest["pair"], "set": path.name, "split": split,
            "fractions": [float(f) for f in manifest["fractions"]]}


def record_training_data(config, sources) -> None:
    """Add to `config` (a model's HF config) the records of the built `sources` (dicts with path and split, as
    in a stage's data.train) it is being trained on; records it already holds are kept, none is repeated."""
    records = list(getattr(config, CONFIG_KEY, None) or [])
    for source in sources:
        record = source_record(source["path"], source.get("split", "train"))
        if record is not None and record not in records:
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
    return "--split " + ",".join(f"{f:g}" for f in fractions)


def describe(record: dict) -> str:
    return f"{record['set']} ({record['split']} split of the {record['pair']} build with {_split_option(record['fractions'])})"


def trained_on_test_split(model_folder: str | Path, pair_folder: str | Path) -> str | None:
    """Why the model in `model_folder` cannot be scored on the test split of the build in `pair_folder`
    (<root>/<pair>): the built data it trained on holds test documents of that build. None when it does not,
    or when either side carries no record (a model trained on other data, datasets made some other way)."""
    try:
        config = json.loads((Path(model_folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    manifest = read_manifest(pair_folder)
    seen = seen_test_documents(config.get(CONFIG_KEY) or [], manifest) if manifest else []
    if not seen:
        return None
    return (f"it trained on {'; '.join(describe(r) for r in seen)}, which holds documents of the test split under "
            f"{pair_folder} (built with {_split_option(manifest['fractions'])}): its scores would be on text it "
            f"trained on. Evaluate it on a build with the split it trained on (`bembed data build --pair "
            f"{manifest['pair']} {_split_option(seen[0]['fractions'])} --out DIR`, then `--data DIR`)")
