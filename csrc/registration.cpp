// The schemas of every bembed op, in one place. Kernels register per device in csrc/cpu and csrc/cuda;
// fake (meta) and autograd implementations are registered from Python (bembed_ext/ops/*.py).
#include <torch/library.h>

TORCH_LIBRARY(bembed, m) {
  // GEGLU (bembed_ext/ops/geglu.py)
  m.def("geglu(Tensor x) -> Tensor");
  m.def("geglu_backward(Tensor grad_out, Tensor x) -> Tensor");
  // ALiBi flash attention (bembed_ext/ops/alibi_attention.py)
  m.def("alibi_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? alibi_slopes, "
        "float softmax_scale) -> (Tensor, Tensor)");
  m.def("alibi_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor? key_padding_mask, Tensor? alibi_slopes, float softmax_scale) -> (Tensor, Tensor, Tensor)");
  m.def("alibi_attention_varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, SymInt max_seqlen, "
        "Tensor? alibi_slopes, float softmax_scale) -> (Tensor, Tensor)");
  m.def("alibi_attention_varlen_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor cu_seqlens, SymInt max_seqlen, Tensor? alibi_slopes, float softmax_scale) -> (Tensor, Tensor, Tensor)");
  // Fused InfoNCE over the (gathered) global batch, this rank's share (bembed_ext/ops/contrastive_loss.py)
  m.def("contrastive_loss_fwd(Tensor queries, Tensor documents, float temperature, bool bidirectional, "
        "int world_size, int rank) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("contrastive_loss_bwd(Tensor grad_loss, Tensor queries, Tensor documents, Tensor row_stats, "
        "Tensor col_stats, Tensor positive_grad, float temperature, bool bidirectional, int world_size, "
        "int rank) -> (Tensor, Tensor)");
}
