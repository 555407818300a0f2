"""The quickstart's evaluation: the untrained model and the installed reference models before training, the
trained model after it on the held-out test splits, the bitext bar the job is judged on, and the
cross-lingual demo sentences."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bembed.files import write_json_atomic

if TYPE_CHECKING:
    from bembed.quickstart import Settings

log = logging.getLogger(__name__)

EXAMPLES = {
    "en": ("Click OK to save your changes.", "Where can I find the train station?"),
    "de": ("Klicken Sie auf OK, um Ihre Änderungen zu speichern.", "Wo finde ich den Bahnhof?"),
    "es": ("Pulse Aceptar para guardar los cambios.", "¿Dónde está la estación de tren?"),
}
MUST_F1 = 0.7


def eval_tasks(settings: Settings, data_root: str, kinds: tuple[str, ...] | None = None):
    from bembed.eval.tasks import TaskSizes, local_tasks

    sizes = TaskSizes(max_items=settings.eval_max_items, max_chars=settings.eval_max_chars, seed=0)
    return local_tasks(data_root, [settings.pair], sizes, kinds or settings.eval_tasks)


def untrained_setup(settings: Settings) -> dict:
    """What the untrained reference is made from besides the tokenizer: stage 1's architecture (its
    model.config) and the last stage's length and prompts. --set overrides of those stages change it."""
    from bembed.quickstart import TRAINING_STAGES, stage_config
    from bembed.training.encoder import stage_prompts

    last = stage_config(settings, TRAINING_STAGES[-1], "", "")
    return json.loads(json.dumps({"model_config": stage_config(settings, "pretrain", "", "").model.config,
                                  "max_length": last.model.max_length, "prompts": stage_prompts(last.multitask),
                                  "seed": settings.seed}))


def untrained_embedder(settings: Settings, tokenizer_dir: str):
    """Stage 1's architecture with fresh weights: what training starts from, embedding the way the trained
    model will (the last stage's length and query/passage prompts), so the two columns compare like for like
    and its evaluation time predicts the final one's, which the training budget reserves."""
    from bembed.encode import Embedder
    from bembed.model import JinaBertConfig, JinaBertModel
    from bembed.tokenizer import model_config_kwargs
    from bembed.training.encoder import load_tokenizer

    setup = untrained_setup(settings)
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(setup["seed"])
    model = JinaBertModel(JinaBertConfig(**{**setup["model_config"], **model_config_kwargs(tokenizer)}))
    embedder = Embedder(model, tokenizer, prompts=setup["prompts"], max_seq_length=setup["max_length"])
    embedder.name = "untrained (same architecture)"
    return embedder


def evaluate_references(settings: Settings, data_root: str, tokenizer_dir: str) -> dict:
    """Scores of the untrained model and of each installed reference model (each kept in
    <out>/eval/<name>.json as soon as it is done, so an interrupted run keeps what it finished)."""
    from bembed.eval import baselines
    from bembed.eval.run import evaluate_encoder
    from bembed.eval.tasks import task_kind

    tasks = eval_tasks(settings, data_root)
    if not tasks:
        raise FileNotFoundError(f"no evaluation tasks for {settings.pair} under {data_root}")
    reference_tasks = [t for t in tasks if task_kind(t) in settings.reference_tasks]
    names = baselines.available() if settings.baselines is None else list(settings.baselines)
    missing = sorted(set(names) - set(baselines.available()))
    if missing:
        log.warning("reference models not installed (skipped): %s", ", ".join(missing))
    setup = untrained_setup(settings)
    results, untrained_s = [], None
    for name in ["untrained", *[n for n in names if n not in missing]]:
        model_tasks = tasks if name == "untrained" else reference_tasks
        # A result kept by an interrupted run is used only if it was made as this one would be (the step
        # may resume with other evaluation settings: quickstart.check_settings lets those through).
        made_with = {"tasks": [t.metadata.name for t in model_tasks], "max_items": settings.eval_max_items,
                     "max_chars": settings.eval_max_chars, **({"untrained": setup} if name == "untrained" else {})}
        cached = settings.out / "eval" / f"{_slug(name)}.json"
        result = json.loads(cached.read_text(encoding="utf-8")) if cached.is_file() else None
        if result is None or result.get("made_with") != made_with:
            log.info("evaluating %s ...", name)
            encoder = untrained_embedder(settings, tokenizer_dir) if name == "untrained" else baselines.load(name)
            result = evaluate_encoder(encoder, model_tasks, name=getattr(encoder, "name", name))
            result["made_with"] = made_with
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cached, result)
        if name == "untrained":
            untrained_s = result["seconds"]
        results.append(result)
    return {"results": results, "untrained_eval_s": untrained_s, "untrained_setup": setup}


def evaluate_model(settings: Settings, data_root: str, model_dir: str, references: list[dict]) -> dict:
    from bembed.data.provenance import held_out_conflict, trained_on
    from bembed.encode import Embedder
    from bembed.eval.encoder import TruncatedEncoder
    from bembed.eval.report import format_table, write_bar_chart, write_json
    from bembed.eval.run import evaluate_encoder

    conflict = held_out_conflict(trained_on(model_dir), Path(data_root) / settings.pair, rebuild_in_place=True)
    if conflict:  # the data was rebuilt with another --split, or a --set source came from another build
        from bembed.quickstart import StepCannotStart

        raise StepCannotStart(f"evaluate: the model trained on {conflict}")
    encoder = Embedder.from_pretrained(model_dir, device="cpu" if not torch.cuda.is_available() else None)
    encoder.name = f"bembed quickstart ({settings.pair})"
    tasks = eval_tasks(settings, data_root)
    results = [evaluate_encoder(encoder, tasks, name=encoder.name)]
    cut = narrowest_cut(encoder.matryoshka_dims, encoder.dim)
    if cut is not None:
        results.append(evaluate_encoder(TruncatedEncoder(encoder, cut), tasks, name=f"{encoder.name}, first {cut} dims"))
    results += references
    folder = settings.out / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(results, folder / "results.json", {"settings": {
        "pair": settings.pair, "max_items": settings.eval_max_items, "max_chars": settings.eval_max_chars,
        "note": "BembedSTSConstructed and BembedPairClassification are constructed, not human-graded"}})
    write_bar_chart(results, folder / "results.png")
    return {"table": format_table(results), "results": results, "verdict": bitext_verdict(results, settings.pair)}


def narrowest_cut(matryoshka_dims, width: int) -> int | None:
    """The narrowest Matryoshka width the model trained below its full width, which the final evaluation
    scores as a second column (the index size a cut buys); None when it trained none."""
    return min((d for d in matryoshka_dims if d < width), default=None)


def final_evaluations(settings: Settings) -> int:
    """How many times the final evaluation scores the trained model: once, and again cut to the narrowest
    width stage 3 trains (read from its config, before training) — what the training budget reserves."""
    from bembed.quickstart import TRAINING_STAGES, model_width, stage_config

    last = stage_config(settings, TRAINING_STAGES[-1], "", "")
    return 1 + (narrowest_cut(last.multitask.matryoshka_dims, model_width(settings)) is not None)


def bitext_verdict(results: list[dict], pair: str) -> dict:
    """The quickstart's bar: held-out bitext F1 ≥ MUST_F1 and above the untrained model and all-MiniLM-L6-v2
    (when installed)."""
    task = f"BembedBitextMining.{pair}"
    mine = results[0]["scores"].get(task)
    others = {r["model"]: r["scores"].get(task) for r in results[1:]
              if r["model"].startswith("untrained") or r["model"] == "all-MiniLM-L6-v2"}
    passed = mine is not None and mine >= MUST_F1 and all(v is None or mine > v for v in others.values())
    return {"task": task, "f1": mine, "compared_with": others, "passed": passed}


def cross_lingual_demo(settings: Settings, model_dir: str) -> dict:
    """Two example sentences per language; the cosine of every English one with every translation."""
    from bembed.encode import Embedder

    en, other = settings.pair.split("-")
    embedder = Embedder.from_pretrained(model_dir)
    a = embedder.encode(list(EXAMPLES[en]))
    b = embedder.encode(list(EXAMPLES[other]))
    sims = (a @ b.T).tolist()
    return {"sentences": {en: list(EXAMPLES[en]), other: list(EXAMPLES[other])}, "cosine": sims}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
