// ALiBi attention CUDA entry points: argument checks, device guard, current stream, allocation, launch.
// The kernels (alibi_attention.cu) read contiguous (tokens, heads, head_dim) tensors with 16-byte aligned
// data, fp16/bf16 only, head dims 32/64/128.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "../checks.h"
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

// q, k, v: same shape, dtype and CUDA device; rank `rank`; dtype and head dim the kernels support.
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t rank, const char* op) {
  TORCH_CHECK_VALUE(q.is_cuda(), op, ": argument 'q' must be on a CUDA device (another argument is), got ",
                    q.device());
  check_dim(q, op, "q", rank);
  check_dtype(q, op, "q", kCudaDtypes);
  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    check_same_device(*t, q, op, name, "q");
    check_same_dtype(*t, q, op, name, "q");
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), op, ": argument '", name, "' must have q's shape ", q.sizes(),
                      ", got ", t->sizes());
  }
  TORCH_CHECK_VALUE(cuda::alibi_attention_supports_head_dim(int(q.size(-1))), op,
                    ": argument 'q' must have head dim 32, 64 or 128 on CUDA, got ", q.size(-1));
  TORCH_CHECK_VALUE(q.size(0) <= kIntMax && q.size(1) <= kIntMax, op, ": argument 'q' is too large, got shape ",
                    q.sizes());
}

// alibi_slopes: float32 (H,) or (B, H) on q's device, or None (no bias).
void set_slopes(cuda::AlibiAttentionParams& params, const std::optional<at::Tensor>& slopes, const at::Tensor& q,
                int64_t batch, int64_t heads, const char* op, at::Tensor& keep_alive) {
  if (!slopes.has_value()) return;
  const at::Tensor& s = *slopes;
  check_same_device(s, q, op, "alibi_slopes", "q");
  check_dtype(s, op, "alibi_slopes", {at::kFloat});
  const bool per_head = s.dim() == 1 && s.size(0) == heads;
  const bool per_batch = s.dim() == 2 && s.size(0) == batch && s.size(1) == heads;
  TORCH_CHECK_VALUE(per_head || per_batch, op, ": argument 'alibi_slopes' must have shape (", heads, ",) or (",
                    batch, ", ", heads, "), got ", s.sizes());
  keep_alive = s.contiguous();
  params.alibi_slopes = keep_alive.const_data_ptr<float>();
  params.slopes_batch_stride = per_batch ? heads : 0;
}

void check_lse(const at::Tensor& lse, c10::IntArrayRef expected, const at::Tensor& q, const char* op) {
  check_same_device(lse, q, op, "lse", "q");
  check_dtype(lse, op, "lse", {at::kFloat});
  TORCH_CHECK_VALUE(lse.sizes() == expected, op, ": argument 'lse' must have shape ", expected, ", got ",
                    lse.sizes());
}

void check_grad_and_out(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& q, const char* op) {
  for (const auto& [t, name] : {std::pair{&grad_out, "grad_out"}, std::pair{&out, "out"}}) {
    check_same_device(*t, q, op, name, "q");
    check_same_dtype(*t, q, op, name, "q");
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), op, ": argument '", name, "' must have q's shape ", q.sizes(),
                      ", got ", t->sizes());
  }
}

// ---- padded (B, L, H, D) ----

struct Padded {
  cuda::AlibiAttentionParams params;
  at::Tensor mask, slopes;  // keep the contiguous copies alive while the kernels are queued
};

Padded padded_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& key_padding_mask, const std::optional<at::Tensor>& slopes,
                     double softmax_scale, const char* op) {
  check_qkv(q, k, v, 4, op);
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  TORCH_CHECK_VALUE(B <= cuda::kAlibiMaxGridYZ && H <= cuda::kAlibiMaxGridYZ, op,
                    ": at most ", cuda::kAlibiMaxGridYZ, " sequences and heads on CUDA, got shape ", q.sizes());
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
    const at::Tensor& m = *key_padding_mask;
    check_same_device(m, q, op, "key_padding_mask", "q");
    check_dtype(m, op, "key_padding_mask", {at::kBool});
    TORCH_CHECK_VALUE(m.dim() == 2 && m.size(0) == B && m.size(1) == L, op,
                      ": argument 'key_padding_mask' must have shape (", B, ", ", L, "), got ", m.sizes());
    out.mask = m.contiguous();
    p.key_padding_mask = out.mask.const_data_ptr<bool>();
  }
  set_slopes(p, slopes, q, B, H, op, out.slopes);
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
  const auto qc = kernel_ready(q), kc = kernel_ready(k), vc = kernel_ready(v);
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  check_launch(cuda::alibi_attention_forward(padded.params, kernel_dtype(q), qc.const_data_ptr(), kc.const_data_ptr(),
                                             vc.const_data_ptr(), out.mutable_data_ptr(),
                                             lse.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
               op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alibi_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_bwd";
  const Padded padded = padded_params(q, k, v, key_padding_mask, alibi_slopes, softmax_scale, op);
  check_grad_and_out(grad_out, out, q, op);
  check_lse(lse, {q.size(0), q.size(2), q.size(1)}, q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto gc = kernel_ready(grad_out), qc = kernel_ready(q), kc = kernel_ready(k), vc = kernel_ready(v);
  const auto oc = kernel_ready(out), lc = lse.contiguous();
  auto delta = at::empty(lc.sizes(), lc.options());
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  check_launch(cuda::alibi_attention_backward(padded.params, kernel_dtype(q), gc.const_data_ptr(), qc.const_data_ptr(),
                                              kc.const_data_ptr(), vc.const_data_ptr(), oc.const_data_ptr(),
                                              lc.const_data_ptr<float>(), delta.mutable_data_ptr<float>(),
                                              dq.mutable_data_ptr(), dk.mutable_data_ptr(), dv.mutable_data_ptr(),
                                              c10::cuda::getCurrentCUDAStream()),
               op);
  return {dq, dk, dv};
}

// ---- varlen (T, H, D) ----

struct Varlen {
  cuda::AlibiAttentionParams params;
  at::Tensor cu_seqlens, slopes;
};

// cu_seqlens must start at 0, never decrease and end at T, or the kernels would read and write out of
// bounds; checking costs one small device-to-host copy.
Varlen varlen_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                     int64_t max_seqlen, const std::optional<at::Tensor>& slopes, double softmax_scale,
                     const char* op) {
  check_qkv(q, k, v, 3, op);
  check_same_device(cu_seqlens, q, op, "cu_seqlens", "q");
  check_dtype(cu_seqlens, op, "cu_seqlens", {at::kInt});
  TORCH_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op,
                    ": argument 'cu_seqlens' must be 1-D with at least one entry, got shape ", cu_seqlens.sizes());
  TORCH_CHECK_VALUE(max_seqlen >= 0 && max_seqlen <= kIntMax, op, ": argument 'max_seqlen' must be in [0, ",
                    kIntMax, "], got ", max_seqlen);
  const int64_t T = q.size(0), H = q.size(1), B = cu_seqlens.size(0) - 1;
  TORCH_CHECK_VALUE(B <= cuda::kAlibiMaxGridYZ && H <= cuda::kAlibiMaxGridYZ, op, ": at most ",
                    cuda::kAlibiMaxGridYZ, " sequences and heads on CUDA, got ", B, " sequences and ", H, " heads");
  Varlen out;
  out.cu_seqlens = cu_seqlens.contiguous();
  const at::Tensor host = out.cu_seqlens.cpu();
  const int32_t* cu = host.const_data_ptr<int32_t>();
  TORCH_CHECK_VALUE(cu[0] == 0, op, ": argument 'cu_seqlens' must start at 0, got ", cu[0]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(cu[b + 1] >= cu[b], op, ": argument 'cu_seqlens' must be non-decreasing, got ", cu[b],
                      " then ", cu[b + 1], " at index ", b);
  }
  TORCH_CHECK_VALUE(cu[B] == T, op, ": argument 'cu_seqlens' must end at the token count ", T, ", got ", cu[B]);
  auto& p = out.params;
  p.batch = int(B);
  p.heads = int(H);
  p.head_dim = int(q.size(2));
  p.max_seqlen = int(max_seqlen);
  p.total_tokens = T;
  p.cu_seqlens = out.cu_seqlens.const_data_ptr<int32_t>();
  p.softmax_scale = float(softmax_scale);
  set_slopes(p, slopes, q, B, H, op, out.slopes);
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
  const auto qc = kernel_ready(q), kc = kernel_ready(k), vc = kernel_ready(v);
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  check_launch(cuda::alibi_attention_forward(varlen.params, kernel_dtype(q), qc.const_data_ptr(), kc.const_data_ptr(),
                                             vc.const_data_ptr(), out.mutable_data_ptr(),
                                             lse.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
               op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alibi_attention_varlen_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_varlen_bwd";
  const Varlen varlen = varlen_params(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale, op);
  check_grad_and_out(grad_out, out, q, op);
  check_lse(lse, {q.size(1), q.size(0)}, q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto gc = kernel_ready(grad_out), qc = kernel_ready(q), kc = kernel_ready(k), vc = kernel_ready(v);
  const auto oc = kernel_ready(out), lc = lse.contiguous();
  auto delta = at::empty(lc.sizes(), lc.options());
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  check_launch(cuda::alibi_attention_backward(varlen.params, kernel_dtype(q), gc.const_data_ptr(), qc.const_data_ptr(),
                                              kc.const_data_ptr(), vc.const_data_ptr(), oc.const_data_ptr(),
                                              lc.const_data_ptr<float>(), delta.mutable_data_ptr<float>(),
                                              dq.mutable_data_ptr(), dk.mutable_data_ptr(), dv.mutable_data_ptr(),
                                              c10::cuda::getCurrentCUDAStream()),
               op);
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CUDA, m) {
  m.impl("alibi_attention_fwd", &alibi_attention_fwd_cuda);
  m.impl("alibi_attention_bwd", &alibi_attention_bwd_cuda);
  m.impl("alibi_attention_varlen_fwd", &alibi_attention_varlen_fwd_cuda);
  m.impl("alibi_attention_varlen_bwd", &alibi_attention_varlen_bwd_cuda);
}

}  // namespace bembed
