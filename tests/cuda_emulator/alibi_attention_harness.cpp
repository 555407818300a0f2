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

// The skip workspace between NaN guards, as the tests' other buffers: the launcher zeroes it and the kernels
// write bounds into it, so a write past either end breaks a guard (the entry points then return kGuardBroken).
class GuardedWorkspace {
 public:
  explicit GuardedWorkspace(int64_t floats) : floats_(size_t(floats) + 2 * kGuard, NAN) {}
  float* data() { return floats_.data() + kGuard; }
  bool intact() const {
    for (size_t i = 0; i < kGuard; ++i) {
      if (!std::isnan(floats_[i]) || !std::isnan(floats_[floats_.size() - 1 - i])) return false;
    }
    return true;
  }

 private:
  static constexpr size_t kGuard = 64;
  std::vector<float> floats_;
};

constexpr int kGuardBroken = 99;

}  // namespace

// 1: cp.async copies land at issue; 0: at the wait that must complete them (see include/cuda_runtime.h).
extern "C" void emu_set_eager_copies(int eager) { emu::eager_copies = eager != 0; }

extern "C" int emu_alibi_forward(int dtype, int batch, int heads, int head_dim, int max_seqlen, int64_t total_tokens,
                                 const int32_t* cu_seqlens, int seqlen, const bool* mask, const float* slopes,
                                 int64_t slopes_batch_stride, float scale, const void* q, const void* k,
                                 const void* v, void* out, float* lse) {
  const auto p = params(batch, heads, head_dim, max_seqlen, total_tokens, cu_seqlens, seqlen, mask, slopes,
                        slopes_batch_stride, scale);
  GuardedWorkspace workspace(bembed::cuda::alibi_attention_workspace_floats(p));
  const int status = bembed::cuda::alibi_attention_forward(p, bembed::cuda::DType(dtype), q, k, v, out, lse,
                                                           workspace.data(), nullptr);
  return status != 0 ? status : (workspace.intact() ? 0 : kGuardBroken);
}

extern "C" int emu_alibi_backward(int dtype, int batch, int heads, int head_dim, int max_seqlen, int64_t total_tokens,
                                  const int32_t* cu_seqlens, int seqlen, const bool* mask, const float* slopes,
                                  int64_t slopes_batch_stride, float scale, const void* grad_out, const void* q,
                                  const void* k, const void* v, const void* out, const float* lse, float* delta,
                                  void* dq, void* dk, void* dv) {
  const auto p = params(batch, heads, head_dim, max_seqlen, total_tokens, cu_seqlens, seqlen, mask, slopes,
                        slopes_batch_stride, scale);
  GuardedWorkspace workspace(bembed::cuda::alibi_attention_workspace_floats(p));
  const int status = bembed::cuda::alibi_attention_backward(p, bembed::cuda::DType(dtype), grad_out, q, k, v, out,
                                                            lse, delta, workspace.data(), dq, dk, dv, nullptr);
  return status != 0 ? status : (workspace.intact() ? 0 : kGuardBroken);
}
