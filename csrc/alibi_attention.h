// ALiBi attention: argument checks shared by the CPU kernels and the CUDA bindings. Every check raises
// c10::ValueError / c10::TypeError naming the op and the argument (see checks.h).
#pragma once

#include <c10/core/TensorImpl.h>
#include <c10/core/UndefinedTensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <optional>

#include "checks.h"

namespace bembed {

// q, k, v: one rank ((B, L, H, D) padded = 4, (T, H, D) varlen = 3), identical shapes, one dtype, one device.
inline void check_alibi_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t rank,
                            const char* op) {
  check_dim(q, op, "q", rank);
  check_dim(k, op, "k", rank);
  check_dim(v, op, "v", rank);
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), op, ": argument 'k' must have the shape of 'q' ", q.sizes(), ", got ",
                    k.sizes());
  TORCH_CHECK_VALUE(v.sizes() == q.sizes(), op, ": argument 'v' must have the shape of 'q' ", q.sizes(), ", got ",
                    v.sizes());
  check_same_device(k, q, op, "k", "q");
  check_same_device(v, q, op, "v", "q");
  check_same_dtype(k, q, op, "k", "q");
  check_same_dtype(v, q, op, "v", "q");
}

// CUDA kernels are compiled for a few head dims.
inline void check_alibi_head_dim(const at::Tensor& q, const char* op, std::initializer_list<int64_t> supported) {
  const int64_t d = q.size(-1);
  for (auto s : supported) {
    if (d == s) return;
  }
  std::ostringstream list;
  const char* sep = "";
  for (auto s : supported) {
    list << sep << s;
    sep = ", ";
  }
  TORCH_CHECK_VALUE(false, op, ": argument 'q' has head dim ", d, " (last dimension); supported on ", q.device().type(),
                    ": {", list.str(), "}");
}

// The CPU kernels take any head dim up to a bound (their per-thread tiles are sized by it).
inline void check_alibi_head_dim_range(const at::Tensor& q, const char* op, int64_t max_head_dim) {
  const int64_t d = q.size(-1);
  TORCH_CHECK_VALUE(d >= 1 && d <= max_head_dim, op, ": argument 'q' has head dim ", d,
                    " (last dimension); supported on ", q.device().type(), ": 1 to ", max_head_dim);
}

// key_padding_mask: bool (B, L), True = real token.
inline void check_alibi_key_padding_mask(const std::optional<at::Tensor>& mask, const at::Tensor& q, const char* op) {
  if (!mask.has_value()) return;
  const auto& m = *mask;
  check_dtype(m, op, "key_padding_mask", {at::kBool});
  check_dim(m, op, "key_padding_mask", 2);
  TORCH_CHECK_VALUE(m.size(0) == q.size(0) && m.size(1) == q.size(1), op,
                    ": argument 'key_padding_mask' must have shape (B, L) = (", q.size(0), ", ", q.size(1), "), got ",
                    m.sizes());
  check_same_device(m, q, op, "key_padding_mask", "q");
}

// alibi_slopes: float32 (H,) or (B, H).
inline void check_alibi_slopes(const std::optional<at::Tensor>& slopes, const at::Tensor& q, int64_t batch,
                               int64_t heads, const char* op) {
  if (!slopes.has_value()) return;
  const auto& s = *slopes;
  check_dtype(s, op, "alibi_slopes", {at::kFloat});
  const bool per_head = s.dim() == 1 && s.size(0) == heads;
  const bool per_batch_head = s.dim() == 2 && s.size(0) == batch && s.size(1) == heads;
  TORCH_CHECK_VALUE(per_head || per_batch_head, op, ": argument 'alibi_slopes' must have shape (H,) = (", heads,
                    ",) or (B, H) = (", batch, ", ", heads, "), got ", s.sizes());
  check_same_device(s, q, op, "alibi_slopes", "q");
}

// cu_seqlens: int32 (B+1,) on q's device; max_seqlen ≥ 0. The values are checked by check_cu_seqlens_values.
inline void check_cu_seqlens(const at::Tensor& cu_seqlens, int64_t max_seqlen, const at::Tensor& q, const char* op) {
  check_dtype(cu_seqlens, op, "cu_seqlens", {at::kInt});
  check_dim(cu_seqlens, op, "cu_seqlens", 1);
  TORCH_CHECK_VALUE(cu_seqlens.size(0) >= 1, op, ": argument 'cu_seqlens' must hold at least one offset (B+1,), got 0");
  check_same_device(cu_seqlens, q, op, "cu_seqlens", "q");
  TORCH_CHECK_VALUE(max_seqlen >= 0, op, ": argument 'max_seqlen' must be ≥ 0, got ", max_seqlen);
}

// The values of cu_seqlens, read on the host: start at 0, never decrease, end at T (total tokens).
// max_seqlen is only a hint (as on CUDA): longer sequences are still computed in full.
inline void check_cu_seqlens_values(const int32_t* cu, int64_t count, int64_t total, const char* op) {
  TORCH_CHECK_VALUE(cu[0] == 0, op, ": argument 'cu_seqlens' must start at 0, got ", cu[0]);
  for (int64_t b = 0; b + 1 < count; ++b) {
    TORCH_CHECK_VALUE(cu[b + 1] >= cu[b], op, ": argument 'cu_seqlens' must be non-decreasing, but cu_seqlens[",
                      b + 1, "] = ", cu[b + 1], " < cu_seqlens[", b, "] = ", cu[b]);
  }
  TORCH_CHECK_VALUE(cu[count - 1] == total, op, ": argument 'cu_seqlens' must end at the number of tokens T = ",
                    total, " (q.size(0)), got ", cu[count - 1]);
}

// check_cu_seqlens_values once per live tensor, for the CUDA kernels (the CPU kernels check every call). On
// CUDA reading the values is a device-to-host copy, i.e. a sync that stalls the launch queue; a model passes
// the same cu_seqlens tensor to every layer, forward and backward, so each thread remembers the last tensor
// that passed and skips the copy and the check when it sees that tensor again unchanged. Sound because:
//  - the record holds a weak_intrusive_ptr to the TensorImpl, which keeps the TensorImpl's memory from being
//    freed (only its data is released when the tensor dies), so no other tensor can get its address while
//    the record lives: an equal address is the same tensor object;
//  - in-place writes bump the version counter, which the tensor shares with all its views and with
//    detach() aliases; set_/resize_/as_strided_ bump it too, and `.data = other` changes the data pointer;
//  - the total T it was checked against is part of the key (a valid cu_seqlens for one q can be bad for
//    another).
// The hole: writes that bypass the version counter are not seen: through a `.data` alias (which has its
// own counter), through memory shared with numpy/DLPack, or by kernels writing through raw pointers. Such a
// write of bad offsets after a successful call reaches the kernels unchecked (flash-attn checks no values
// at all). Inference tensors have no version counter, so they are checked on every call.
class ValidatedCuSeqlens {
 public:
  static bool cacheable(const at::Tensor& t) { return t.unsafeGetTensorImpl()->version_counter().enabled(); }

  bool matches(const at::Tensor& t, int64_t total) const {
    return impl_.has_value() && impl_->_unsafe_get_target() == t.unsafeGetTensorImpl() && version_ == t._version() &&
           data_ == t.const_data_ptr() && size_ == t.size(0) && stride_ == t.stride(0) && total_ == total;
  }

  void remember(const at::Tensor& t, int64_t total) {
    impl_.emplace(t.getIntrusivePtr());
    version_ = t._version();
    data_ = t.const_data_ptr();
    size_ = t.size(0);
    stride_ = t.stride(0);
    total_ = total;
  }

 private:
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>> impl_;
  int64_t version_ = 0, size_ = 0, stride_ = 0, total_ = 0;
  const void* data_ = nullptr;
};

// The values of a checked cu_seqlens (check_cu_seqlens) on any device, copied to the host unless this thread
// last validated this very tensor, unchanged, against the same total (see ValidatedCuSeqlens).
inline void check_cu_seqlens_values(const at::Tensor& cu_seqlens, int64_t total, const char* op) {
  thread_local ValidatedCuSeqlens last;
  const bool cacheable = ValidatedCuSeqlens::cacheable(cu_seqlens);
  if (cacheable && last.matches(cu_seqlens, total)) return;
  const at::Tensor host = cu_seqlens.cpu().contiguous();
  check_cu_seqlens_values(host.const_data_ptr<int32_t>(), host.size(0), total, op);
  if (cacheable) last.remember(cu_seqlens, total);
}

// The row log-sum-exp is float32, except for float64 inputs (CPU), which keep it in float64 so that
// gradcheck sees an exact backward.
inline at::ScalarType alibi_lse_dtype(at::ScalarType q_dtype) {
  return q_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Backward inputs: grad_out and out are like q; lse has alibi_lse_dtype and lse_shape ((B, H, L) or (H, T)).
inline void check_alibi_backward_inputs(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
                                        const at::Tensor& q, at::IntArrayRef lse_shape, const char* op) {
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes(), op, ": argument 'grad_out' must have the shape of 'q' ",
                    q.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), op, ": argument 'out' must have the shape of 'q' ", q.sizes(),
                    ", got ", out.sizes());
  check_same_device(grad_out, q, op, "grad_out", "q");
  check_same_device(out, q, op, "out", "q");
  check_same_device(lse, q, op, "lse", "q");
  check_same_dtype(grad_out, q, op, "grad_out", "q");
  check_same_dtype(out, q, op, "out", "q");
  TORCH_CHECK_TYPE(lse.scalar_type() == alibi_lse_dtype(q.scalar_type()), op, ": argument 'lse' must have dtype ",
                   alibi_lse_dtype(q.scalar_type()), " for q of dtype ", q.scalar_type(), ", got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.sizes() == lse_shape, op, ": argument 'lse' must have shape ", lse_shape, ", got ",
                    lse.sizes());
}

}  // namespace bembed
