// ALiBi attention CUDA entry points: argument checks, device guard, current stream, allocation, launch.
// The kernels (alibi_attention_fwd.cu, alibi_attention_bwd.cu) read contiguous (tokens, heads, head_dim)
// tensors with 16-byte aligned data, fp16/bf16 only, head dims 32/64/128.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

#include "../alibi_attention.h"
#include "alibi_attention.cuh"
#include "launch.h"

namespace bembed {
namespace {

constexpr auto kCudaDtypes = {at::kHalf, at::kBFloat16};
constexpr int64_t kIntMax = std::numeric_limits<int>::max();

// Contiguous with 16-byte aligned data (a contiguous view at an odd storage offset is copied).
at::Tensor kernel_ready(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// The shared q/k/v checks, then what the CUDA kernels add: a CUDA q (the op is dispatched here when any
// argument is on CUDA), fp16/bf16, head dim 32/64/128, and sizes that fit the int indexing and the grid.
void check_cuda_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t rank, int64_t batch,
                    int64_t heads, const char* op) {
  check_alibi_qkv(q, k, v, rank, op);
  TORCH_CHECK_VALUE(q.is_cuda(), op, ": argument 'q' must be on a CUDA device like the other arguments, got ",
                    q.device());
  check_dtype(q, op, "q", kCudaDtypes);
  check_alibi_head_dim(q, op, {32, 64, 128});
  TORCH_CHECK_VALUE(q.size(0) <= kIntMax && q.size(1) <= kIntMax, op, ": argument 'q' is too large, got shape ",
                    q.sizes());
  TORCH_CHECK_VALUE(batch <= cuda::kAlibiMaxGridYZ && heads <= cuda::kAlibiMaxGridYZ, op, ": at most ",
                    cuda::kAlibiMaxGridYZ, " sequences and heads on CUDA, got ", batch, " sequences and ", heads,
                    " heads");
}

// A clear error instead of a failed launch on GPUs whose per-block shared memory is below what the kernels of
// this head dim take (the D=128 backward needs ~102 KiB; sm_86/sm_89 allow 99 KiB).
void check_shared_memory(int needed, const at::Tensor& q, const char* direction, const char* op) {
  const int device = q.device().index();
  int limit = 0, major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  TORCH_CHECK_VALUE(needed <= limit, op, ": head_dim ", q.size(-1), " needs ", needed,
                    " bytes of shared memory per block for the ", direction, ", but this GPU (sm_", major, minor,
                    ") allows ", limit, "; use head_dim 32 or 64 on it");
}

// alibi_slopes (already checked): float32 (H,) or (B, H), or None (no bias).
void set_slopes(cuda::AlibiAttentionParams& params, const std::optional<at::Tensor>& slopes, at::Tensor& keep_alive) {
  if (!slopes.has_value()) return;
  keep_alive = slopes->contiguous();
  params.alibi_slopes = keep_alive.const_data_ptr<float>();
  params.slopes_batch_stride = keep_alive.dim() == 2 ? params.heads : 0;
}

// The bounds the kernels skip far tiles by (alibi_attention_skip.cuh; the launchers fill it).
at::Tensor skip_workspace(const cuda::AlibiAttentionParams& params, const at::Tensor& q) {
  return at::empty({std::max<int64_t>(1, cuda::alibi_attention_workspace_floats(params))},
                   q.options().dtype(at::kFloat));
}

// ---- padded (B, L, H, D) ----

// The backward launch shared by the padded and varlen entry points (their inputs are checked already).
std::tuple<at::Tensor, at::Tensor, at::Tensor> launch_backward(const cuda::AlibiAttentionParams& params,
                                                               const at::Tensor& grad_out, const at::Tensor& q,
                                                               const at::Tensor& k, const at::Tensor& v,
                                                               const at::Tensor& out, const at::Tensor& lse,
                                                               const char* op) {
  const c10::cuda::CUDAGuard guard(q.device());
  check_shared_memory(cuda::alibi_attention_backward_shared_bytes(params.head_dim), q, "backward", op);
  const auto gc = kernel_ready(grad_out), qc = kernel_ready(q), kc = kernel_ready(k), vc = kernel_ready(v);
  const auto oc = kernel_ready(out), lc = lse.contiguous();
  auto delta = at::empty(lc.sizes(), lc.options());
  auto workspace = skip_workspace(params, q);
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  check_launch(cuda::alibi_attention_backward(params, kernel_dtype(q), gc.const_data_ptr(), qc.const_data_ptr(),
                                              kc.const_data_ptr(), vc.const_data_ptr(), oc.const_data_ptr(),
                                              lc.const_data_ptr<float>(), delta.mutable_data_ptr<float>(),
                                              workspace.mutable_data_ptr<float>(), dq.mutable_data_ptr(),
                                              dk.mutable_data_ptr(), dv.mutable_data_ptr(),
                                              c10::cuda::getCurrentCUDAStream()),
               op);
  return {dq, dk, dv};
}

struct Padded {
  cuda::AlibiAttentionParams params;
  at::Tensor mask, slopes;  // keep the contiguous copies alive while the kernels are queued
};

Padded padded_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& key_padding_mask, const std::optional<at::Tensor>& slopes,
                     double softmax_scale, const char* op) {
  check_dim(q, op, "q", 4);
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  check_cuda_qkv(q, k, v, 4, B, H, op);
  check_alibi_key_padding_mask(key_padding_mask, q, op);
  check_alibi_slopes(slopes, q, B, H, op);
  Padded out;
  auto& p = out.params;
  p.batch = int(B);
  p.heads = int(H);
  p.head_dim = int(q.size(3));
  p.seqlen = int(L);
  p.max_seqlen = int(L);
  p.total_tokens = B * L;
  p.softmax_scale = float(softmax_scale);
  if (key_padding_mask.has_value()) {
    out.mask = key_padding_mask->contiguous();
    p.key_padding_mask = out.mask.const_data_ptr<bool>();
  }
  set_slopes(p, slopes, out.slopes);
  return out;
}

std::tuple<at::Tensor, at::Tensor> alibi_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v,
                                                            const std::optional<at::Tensor>& key_padding_mask,
                                                            const std::optional<at::Tensor>& alibi_slopes,
                                                            double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_fwd";
  const Padded padded = padded_params(q, k, v, key_padding_mask, alibi_slopes, softmax_scale, op);
  const c10::cuda::CUDAGuard guard(q.device());
  check_shared_memory(cuda::alibi_attention_forward_shared_bytes(int(q.size(-1))), q, "forward", op);
  const auto qc = kernel_ready(q), kc = kernel_ready(k), vc = kernel_ready(v);
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  auto workspace = skip_workspace(padded.params, q);
  check_launch(cuda::alibi_attention_forward(padded.params, kernel_dtype(q), qc.const_data_ptr(), kc.const_data_ptr(),
                                             vc.const_data_ptr(), out.mutable_data_ptr(),
                                             lse.mutable_data_ptr<float>(), workspace.mutable_data_ptr<float>(),
                                             c10::cuda::getCurrentCUDAStream()),
               op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alibi_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_bwd";
  const Padded padded = padded_params(q, k, v, key_padding_mask, alibi_slopes, softmax_scale, op);
  check_alibi_backward_inputs(grad_out, out, lse, q, {q.size(0), q.size(2), q.size(1)}, op);
  return launch_backward(padded.params, grad_out, q, k, v, out, lse, op);
}

// ---- varlen (T, H, D) ----

struct Varlen {
  cuda::AlibiAttentionParams params;
  at::Tensor cu_seqlens, slopes;
};

// The values of cu_seqlens are checked on the host (one small device-to-host copy, skipped when this thread
// already validated this tensor unchanged: see ValidatedCuSeqlens): a bad offset would make the kernels read
// and write out of bounds. max_seqlen only sizes the grid; the kernels stride over longer sequences.
Varlen varlen_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                     int64_t max_seqlen, const std::optional<at::Tensor>& slopes, double softmax_scale,
                     const char* op) {
  check_dim(q, op, "q", 3);
  check_cu_seqlens(cu_seqlens, max_seqlen, q, op);
  const int64_t T = q.size(0), H = q.size(1), B = cu_seqlens.size(0) - 1;
  check_cuda_qkv(q, k, v, 3, B, H, op);
  check_alibi_slopes(slopes, q, B, H, op);
  check_cu_seqlens_values(cu_seqlens, T, op);
  Varlen out;
  out.cu_seqlens = cu_seqlens.contiguous();
  auto& p = out.params;
  p.batch = int(B);
  p.heads = int(H);
  p.head_dim = int(q.size(2));
  p.max_seqlen = int(std::min<int64_t>(max_seqlen, kIntMax));
  p.total_tokens = T;
  p.cu_seqlens = out.cu_seqlens.const_data_ptr<int32_t>();
  p.softmax_scale = float(softmax_scale);
  set_slopes(p, slopes, out.slopes);
  return out;
}

std::tuple<at::Tensor, at::Tensor> alibi_attention_varlen_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v, const at::Tensor& cu_seqlens,
                                                                   int64_t max_seqlen,
                                                                   const std::optional<at::Tensor>& alibi_slopes,
                                                                   double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_varlen_fwd";
  const Varlen varlen = varlen_params(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale, op);
  const c10::cuda::CUDAGuard guard(q.device());
  check_shared_memory(cuda::alibi_attention_forward_shared_bytes(int(q.size(-1))), q, "forward", op);
  const auto qc = kernel_ready(q), kc = kernel_ready(k), vc = kernel_ready(v);
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  auto workspace = skip_workspace(varlen.params, q);
  check_launch(cuda::alibi_attention_forward(varlen.params, kernel_dtype(q), qc.const_data_ptr(), kc.const_data_ptr(),
                                             vc.const_data_ptr(), out.mutable_data_ptr(),
                                             lse.mutable_data_ptr<float>(), workspace.mutable_data_ptr<float>(),
                                             c10::cuda::getCurrentCUDAStream()),
               op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alibi_attention_varlen_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_varlen_bwd";
  const Varlen varlen = varlen_params(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale, op);
  check_alibi_backward_inputs(grad_out, out, lse, q, {q.size(1), q.size(0)}, op);
  return launch_backward(varlen.params, grad_out, q, k, v, out, lse, op);
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CUDA, m) {
  m.impl("alibi_attention_fwd", &alibi_attention_fwd_cuda);
  m.impl("alibi_attention_bwd", &alibi_attention_bwd_cuda);
  m.impl("alibi_attention_varlen_fwd", &alibi_attention_varlen_fwd_cuda);
  m.impl("alibi_attention_varlen_bwd", &alibi_attention_varlen_bwd_cuda);
}

}  // namespace bembed
