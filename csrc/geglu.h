// GEGLU: y = gelu_erf(x[..., :I]) * x[..., I:]. Checks shared by the CPU and CUDA entry points.
#pragma once

#include "checks.h"

namespace bembed {

inline void check_geglu_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": argument 'x' must have at least 1 dimension, got a scalar");
  TORCH_CHECK_VALUE(x.size(-1) % 2 == 0, op, ": argument 'x' must have an even last dimension (2*I), got ",
                    x.size(-1));
}

inline void check_geglu_grad(const at::Tensor& grad_out, const at::Tensor& x, const char* op) {
  check_same_device(grad_out, x, op, "grad_out", "x");
  check_same_dtype(grad_out, x, op, "grad_out", "x");
  auto expected = x.sizes().vec();
  expected.back() /= 2;
  TORCH_CHECK_VALUE(grad_out.sizes().vec() == expected, op, ": argument 'grad_out' must have shape ",
                    c10::IntArrayRef(expected), ", got ", grad_out.sizes());
}

inline std::vector<int64_t> geglu_output_shape(const at::Tensor& x) {
  auto shape = x.sizes().vec();
  shape.back() /= 2;
  return shape;
}

}  // namespace bembed
