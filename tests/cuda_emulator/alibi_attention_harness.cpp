// C entry points for running csrc/cuda/alibi_attention_{fwd,bwd}.cu under the host emulation (ctypes from
// tests/test_alibi_attention_cuda_emulated.py). build.py rewrites the CUDA-only syntax of a copy of the
// sources (kernel launches, extern __shared__, the mma asm) into calls to emu::, then includes them here.
#include "emu_mma.h"

#include <cmath>
#include <vector>

#include "alibi_attention_fwd.cu"
#include "alibi_attention_bwd.cu"

namespace {

bembed::cuda::AlibiAttentionParams params(int batch, int heads, int head_dim, int max_seqlen, int64_t total_tokens,
                                          const int32_t* cu_seqlens, int seqlen, const bool* mask,
                                          const float* slopes, int64_t slopes_batch_stride, float scale) {
  bembed::cuda::AlibiAttentionParams p;
  p.batch = batch;
  p.heads = heads;
  p.head_dim = head_dim;
  p.max_seqlen = max_seqlen;
  p.total_tokens = total_tokens;
  p.cu_seqlens = cu_seqlens;
  p.seqlen = seqlen;
  p.key_padding_mask = mask;
  p.alibi_slopes = slopes;
  p.slopes_batch_stride = slopes_batch_stride;
  p.softmax_scale = scale;
  return p;
}

}  // namespace

// 1: cp.async copies land at issue; 0: at the wait that must complete them (see include/cuda_runtime.h).
extern "C" void emu_set_eager_copies(int eager) { emu::eager_copies = eager != 0; }

extern "C" int emu_alibi_forward(int dtype, int batch, int heads, int head_dim, int max_seqlen, int64_t total_tokens,
                                 const int32_t* cu_seqlens, int seqlen, const bool* mask, const float* slopes,
                                 int64_t slopes_batch_stride, float scale, const void* q, const void* k,
                                 const void* v, void* out, float* lse) {
  const auto p = params(batch, heads, head_dim, max_seqlen, total_tokens, cu_seqlens, seqlen, mask, slopes,
                        slopes_batch_stride, scale);
  std::vector<float> workspace(bembed::cuda::alibi_attention_workspace_floats(p), NAN);  // the launcher zeroes it
  return bembed::cuda::alibi_attention_forward(p, bembed::cuda::DType(dtype), q, k, v, out, lse, workspace.data(),
                                               nullptr);
}

extern "C" int emu_alibi_backward(int dtype, int batch, int heads, int head_dim, int max_seqlen, int64_t total_tokens,
                                  const int32_t* cu_seqlens, int seqlen, const bool* mask, const float* slopes,
                                  int64_t slopes_batch_stride, float scale, const void* grad_out, const void* q,
                                  const void* k, const void* v, const void* out, const float* lse, float* delta,
                                  void* dq, void* dk, void* dv) {
  const auto p = params(batch, heads, head_dim, max_seqlen, total_tokens, cu_seqlens, seqlen, mask, slopes,
                        slopes_batch_stride, scale);
  std::vector<float> workspace(bembed::cuda::alibi_attention_workspace_floats(p), NAN);
  return bembed::cuda::alibi_attention_backward(p, bembed::cuda::DType(dtype), grad_out, q, k, v, out, lse, delta,
                                                workspace.data(), dq, dk, dv, nullptr);
}
