// GEGLU CUDA entry points: checks (shared with CPU), device guard, stream, allocation, launch.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../geglu.h"
#include "geglu.cuh"
#include "launch.h"

namespace bembed {
namespace {

constexpr auto kCudaDtypes = {at::kFloat, at::kHalf, at::kBFloat16};

at::Tensor geglu_cuda(const at::Tensor& x) {
  check_geglu_input(x, "bembed.geglu");
  check_dtype(x, "bembed.geglu", "x", kCudaDtypes);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  auto y = at::empty(geglu_output_shape(x), x.options());
  const int64_t inner = x.size(-1) / 2;
  if (y.numel() == 0) return y;
  check_launch(cuda::geglu_forward(xc.const_data_ptr(), y.mutable_data_ptr(), y.numel() / inner, inner,
                                   kernel_dtype(x), c10::cuda::getCurrentCUDAStream()),
               "bembed.geglu");
  return y;
}

at::Tensor geglu_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x) {
  check_geglu_input(x, "bembed.geglu_backward");
  check_dtype(x, "bembed.geglu_backward", "x", kCudaDtypes);
  check_geglu_grad(grad_out, x, "bembed.geglu_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const auto gc = grad_out.contiguous();
  auto dx = at::empty(x.sizes(), x.options());
  const int64_t inner = x.size(-1) / 2;
  if (gc.numel() == 0) return dx;
  check_launch(cuda::geglu_backward(gc.const_data_ptr(), xc.const_data_ptr(), dx.mutable_data_ptr(),
                                    gc.numel() / inner, inner, kernel_dtype(x), c10::cuda::getCurrentCUDAStream()),
               "bembed.geglu_backward");
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CUDA, m) {
  m.impl("geglu", &geglu_cuda);
  m.impl("geglu_backward", &geglu_backward_cuda);
}

}  // namespace bembed
