// C entry points for running csrc/cuda/geglu.cu under the host emulation (ctypes from
// tests/test_geglu_cuda_emulated.py). build.py rewrites the kernel launches of a copy of the source into calls
// to emu::launch, then includes it here.
#include "geglu.cu"

extern "C" int emu_geglu_forward(const void* x, void* y, int64_t rows, int64_t inner, int dtype) {
  return bembed::cuda::geglu_forward(x, y, rows, inner, bembed::cuda::DType(dtype), nullptr);
}

extern "C" int emu_geglu_backward(const void* grad_out, const void* x, void* grad_x, int64_t rows, int64_t inner,
                                  int dtype) {
  return bembed::cuda::geglu_backward(grad_out, x, grad_x, rows, inner, bembed::cuda::DType(dtype), nullptr);
}
