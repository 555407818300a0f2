"""bembed: long-context bilingual text embeddings (JinaBERT style) on fused PyTorch kernels.

Importing bembed loads the compiled ops (`bembed_ext`). Heavier pieces (data, eval) import lazily.
"""

__version__ = "0.1.0"

import bembed_ext as ops  # noqa: F401  (loads torch.ops.bembed)

# Importing the model registers JinaBERT with AutoConfig / AutoModel / AutoModelForMaskedLM.
from .model import JinaBertConfig, JinaBertForMaskedLM, JinaBertModel  # noqa: E402
from .encode import Embedder  # noqa: E402
from .quantize import quantize_embeddings  # noqa: E402
from .search import semantic_search  # noqa: E402

__all__ = ["Embedder", "JinaBertConfig", "JinaBertForMaskedLM", "JinaBertModel", "__version__", "ops",
           "quantize_embeddings", "semantic_search"]
