"""The `bembed` command. Each subcommand lives in bembed/commands/<name>.py and provides
`add_arguments(parser)` and `run(args) -> int`; it is imported only when used, so `bembed info` stays
fast and works where optional packages (datasets, mteb) are missing."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

SUBCOMMANDS = {
    "info": "versions, device, and which kernels are registered",
    "data": "fetch the offline sources, build datasets, check your own files",
    "eval": "evaluate a model and the installed baselines on local mteb tasks",
    "encode": "embed the texts of a .txt/.jsonl file into .npy/.parquet vectors",
    "search": "the best documents of a .txt/.jsonl corpus for each query (exact top-k)",
    "pretrain": "stage 1: MLM pretraining with whole-word masking",
    "pairs": "stage 2: contrastive pair training (bidirectional InfoNCE)",
    "multitask": "stage 3: multi-task fine-tuning (retrieval + STS)",
    "align": "teach an existing model a new language with a frozen teacher",
    "tokenizer": "train the bilingual BPE tokenizer for a language pair",
    "quickstart": "the main job: data, tokenizer, stages 1-3, evaluation, saved model, in ~20 minutes on CPU",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bembed", description="Long-context bilingual text embeddings.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"bembed.commands.{name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 tells the story; the other ranks still report warnings and errors.
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
