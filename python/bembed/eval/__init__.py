"""bembed's evaluation layer on mteb 2.x: a wrapper that makes any encoder an mteb model, local tasks built
from `bembed data build` test splits, the reference-model baselines, and the report (table, json, PNG).
mteb and datasets are imported lazily, inside the functions that need them."""
