// ALiBi flash attention CUDA launchers (torch-free). Non-causal softmax(q·kᵀ·scale − slope_h·|i−j|)·v with
// masked keys excluded; the bias is computed on the fly. fp16/bf16 inputs, fp32 accumulation, head dims
// 32/64/128. Every q/k/v/out/grad tensor is contiguous (tokens, heads, head_dim) with 16-byte aligned data.
#pragma once

#include <cstdint>

#include "dtype.cuh"

namespace bembed::cuda {

// One description serves both layouts. Sequence b spans tokens [cu_seqlens[b], cu_seqlens[b+1]) when
// cu_seqlens is set (varlen; lse is (H, T)), otherwise [b·seqlen, (b+1)·seqlen) (padded; lse is (B, H, L)).
// Positions i, j count from the sequence start.
struct AlibiAttentionParams {
  int batch = 0;
  int heads = 0;
  int head_dim = 0;
  int max_seqlen = 0;             // ≥ every sequence length: sets the grid
  int64_t total_tokens = 0;       // B·L padded, T varlen
  const int32_t* cu_seqlens = nullptr;  // (B+1,) device pointer, varlen only
  int seqlen = 0;                 // L, padded only
  const bool* key_padding_mask = nullptr;  // (B, L), True = real token; padded only, optional
  const float* alibi_slopes = nullptr;     // (H,) or (B, H) float32, optional (null: no bias)
  int64_t slopes_batch_stride = 0;         // 0 for (H,), H for (B, H)
  float softmax_scale = 1.0f;
};

// Largest batch and head counts the grid can hold (gridDim.z and gridDim.y).
constexpr int kAlibiMaxGridYZ = 65535;

// Dynamic shared memory per block the kernels for a head dim need (forward, or the larger backward
// kernel), so that the binding can refuse a GPU with a smaller per-block limit (sm_86/sm_89: 99 KiB) clearly.
int alibi_attention_forward_shared_bytes(int head_dim);
int alibi_attention_backward_shared_bytes(int head_dim);

// Floats of the workspace both launchers take: the bounds that let far tiles be skipped, per (sequence, head)
// and per run of query rows (alibi_attention_skip.cuh).
int64_t alibi_attention_workspace_floats(const AlibiAttentionParams& params);

// out has q's shape and dtype; lse (float32) gets the natural-log row log-sum-exp, −inf for rows with no
// valid key (those rows output zeros).
cudaError_t alibi_attention_forward(const AlibiAttentionParams& params, DType dtype, const void* q, const void* k,
                                    const void* v, void* out, float* lse, float* workspace, cudaStream_t stream);

// delta is a float32 workspace with lse's shape (it receives rowsum(grad_out ∘ out)).
cudaError_t alibi_attention_backward(const AlibiAttentionParams& params, DType dtype, const void* grad_out,
                                     const void* q, const void* k, const void* v, const void* out,
                                     const float* lse, float* delta, float* workspace, void* grad_q, void* grad_k,
                                     void* grad_v, cudaStream_t stream);

}  // namespace bembed::cuda
