"""Cross-lingual alignment: teach an existing encoder a new language with a frozen teacher.

On parallel pairs (en, xx): L = mean[(1 − cos(s(en), t(en))) + β·(1 − cos(s(en), s(xx)))], where s is the
student (trained) and t the teacher (frozen; by default a copy of the student as loaded). The first term
keeps the student's English space where the teacher had it, the second pulls each translation onto its
English sentence. The student is a bembed JinaBERT or any HF `AutoModel` folder (e.g. all-MiniLM-L6-v2);
the teacher may be another model folder with its own tokenizer. A student with prompts (E5's "query: " /
"passage: ") is trained under each of them and under none, rows taking turns (`align.prompts`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from bembed.encode import DOCUMENT_PROMPT_NAMES
from bembed.st_folder import folder_prompts, folder_usage

from .batching import Batch, epoch_indices, shard
from .config import AlignRun, ModelConfig
from .data import describe_rows, read_pair_rows
from .encoder import check_max_length, embed, export_encoder, load_encoder, position_limit, tokenize


class AlignStage:
    def __init__(self, cfg: AlignRun, rank: int = 0):
        cfg.validate()  # again: code may have edited the loaded config
        if not cfg.model.init_from:
            raise ValueError("model.init_from: alignment starts from an existing model folder")
        if not cfg.data.train:
            raise ValueError("data.train: give at least one parallel source (src/tgt or query/document columns)")
        self.cfg = cfg
        self.model, self.tokenizer = load_encoder(cfg.model)
        check_max_length(self.model, cfg.model.max_length)
        if cfg.align.teacher:
            self.teacher, self.teacher_tokenizer = load_encoder(ModelConfig(init_from=cfg.align.teacher),
                                                                key="align.teacher")
            student, teacher = self.model.config.hidden_size, self.teacher.config.hidden_size
            if student != teacher:  # the loss compares their embeddings coordinate by coordinate
                raise ValueError(f"align.teacher: its embeddings have {teacher} dimensions, the student's "
                                 f"(model.init_from) {student}")
        else:
            self.teacher, self.teacher_tokenizer = copy.deepcopy(self.model), self.tokenizer
        self.teacher.eval().requires_grad_(False)
        # the teacher reads the English side at most as far as its own position table reaches (as
        # sentence-transformers would cut it): a long-context student may train on longer rows than it takes
        self.teacher_length = min(cfg.model.max_length, position_limit(self.teacher) or cfg.model.max_length)
        self.rows, self.origins = read_pair_rows(cfg.data.train)
        student_prompts = folder_prompts(cfg.model.init_from) if cfg.align.prompts else {}
        teacher_prompts = folder_prompts(cfg.align.teacher) if cfg.align.teacher else student_prompts
        self.prefixes = prompt_turns(student_prompts, teacher_prompts)

    def batch(self, index: int, rank: int, world: int, size: int) -> Batch:
        rows = epoch_indices(len(self.rows), size * world, index, self.cfg.train.seed, stream=("align",))
        picked = shard(rows, rank, world)
        # a row's prompt changes from batch to batch, deterministically (a resumed run draws the same)
        prefixes = [self.prefixes[(i + index) % len(self.prefixes)] for i in picked]
        en = [student + self.rows[i]["query"] for i, (student, _) in zip(picked, prefixes)]
        xx = [student + self.rows[i]["document"] for i, (student, _) in zip(picked, prefixes)]
        teacher_en = [teacher + self.rows[i]["query"] for i, (_, teacher) in zip(picked, prefixes)]
        length = self.cfg.model.max_length
        s_en, s_xx = tokenize(self.tokenizer, en, length), tokenize(self.tokenizer, xx, length)
        t_en = tokenize(self.teacher_tokenizer, teacher_en, self.teacher_length)
        return Batch({"en_ids": s_en["input_ids"], "en_mask": s_en["attention_mask"], "xx_ids": s_xx["input_ids"],
                      "xx_mask": s_xx["attention_mask"], "t_ids": t_en["input_ids"], "t_mask": t_en["attention_mask"]},
                     tokens=int(s_en["attention_mask"].sum() + s_xx["attention_mask"].sum()),
                     source=describe_rows(picked, self.origins))

    def loss(self, t: dict) -> tuple[torch.Tensor, dict]:
        self.teacher.to(t["t_ids"].device)
        with torch.no_grad():
            target = embed(self.teacher, t["t_ids"], t["t_mask"])
        en = embed(self.model, t["en_ids"], t["en_mask"])
        xx = embed(self.model, t["xx_ids"], t["xx_mask"])
        keep = (1 - (en * target).sum(-1)).mean()
        cross = (1 - (en * xx).sum(-1)).mean()
        return keep + self.cfg.align.beta * cross, {"teacher_distance": keep.detach(), "cross_distance": cross.detach()}

    def export(self, folder: Path, model: torch.nn.Module) -> None:
        # the student keeps its prompts (an E5-style model's query/passage prefixes) and its default prompt (its
        # length, as every stage's export does): alignment changes the languages it knows, not how it is queried
        student = self.cfg.model.init_from
        export_encoder(model, self.tokenizer, folder, source=student, prompts=folder_prompts(student) or None,
                       default_prompt_name=folder_usage(student)[0])


def prompt_turns(student_prompts: dict[str, str], teacher_prompts: dict[str, str]) -> list[tuple[str, str]]:
    """The (student prefix, teacher prefix) pairs the rows take turns with: none, then each distinct student
    prefix once (a saved folder's "document" copies its "passage": one turn, not two). Its teacher prefix is
    the teacher's prompt under one of the names the student gives that prefix, a document prompt under any of
    "document", "passage" and "corpus" (as encode_document takes them); none when the teacher has no such name."""
    names_of: dict[str, list[str]] = {}
    for name in sorted(student_prompts):
        if student_prompts[name]:
            names_of.setdefault(student_prompts[name], []).append(name)
    turns = [("", "")]
    for prefix, names in names_of.items():
        aliases = list(DOCUMENT_PROMPT_NAMES) if set(names) & set(DOCUMENT_PROMPT_NAMES) else []
        teacher = next((teacher_prompts[name] for name in names + aliases if name in teacher_prompts), "")
        turns.append((prefix, teacher))
    return turns


@torch.no_grad()
def cross_lingual_distance(model, tokenizer, pairs: list[tuple[str, str]], max_length: int = 128,
                           batch_size: int = 64) -> float:
    """Mean 1 − cos(model(en), model(xx)) over (en, xx) pairs: how far apart the model puts translations. The
    model runs in eval mode and is given back in the mode it was in."""
    if not pairs:
        raise ValueError("pairs: give at least one (en, xx) pair")
    training, total = model.training, 0.0
    device = next(model.parameters()).device
    model.eval()
    try:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            a = tokenize(tokenizer, [p[0] for p in chunk], max_length)
            b = tokenize(tokenizer, [p[1] for p in chunk], max_length)
            ea = embed(model, a["input_ids"].to(device), a["attention_mask"].to(device))
            eb = embed(model, b["input_ids"].to(device), b["attention_mask"].to(device))
            total += float((1 - (ea * eb).sum(-1)).sum())
    finally:
        model.train(training)
    return total / len(pairs)
