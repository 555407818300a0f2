"""JinaBERT on bembed's kernels: config, model, MLM head, pooling, local loading and the
sentence-transformers export. Importing this registers the classes with transformers' Auto* factories."""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from .config import MODEL_TYPE, JinaBertConfig
from .modeling import JinaBertForMaskedLM, JinaBertModel
from .packing import Packing, pack_attention_mask
from .pooling import mean_pool, mean_pool_packed, normalize

AutoConfig.register(MODEL_TYPE, JinaBertConfig, exist_ok=True)
AutoModel.register(JinaBertConfig, JinaBertModel, exist_ok=True)
AutoModelForMaskedLM.register(JinaBertConfig, JinaBertForMaskedLM, exist_ok=True)

__all__ = ["JinaBertConfig", "JinaBertForMaskedLM", "JinaBertModel", "MODEL_TYPE", "Packing", "mean_pool",
           "mean_pool_packed", "normalize", "pack_attention_mask"]
