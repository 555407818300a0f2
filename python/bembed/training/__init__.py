"""Training: one trainer core (trainer.py, checkpoint.py, batching.py) and one module per stage —
mlm.py (stage 1), pairs.py (stage 2), multitask.py (stage 3), align.py (cross-lingual alignment) —
with dataclass configs loaded from YAML plus dotted overrides (config.py). Run them with
`bembed pretrain|pairs|multitask|align --config CONFIG [section.field=value ...]`."""

from .config import load_config
from .trainer import NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "Trainer", "load_config"]
