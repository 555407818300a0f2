// GEGLU CUDA launchers (torch-free). x is (rows, 2·inner) contiguous; y and grad_out (rows, inner).
#pragma once

#include <cstdint>

#include "dtype.cuh"

namespace bembed::cuda {

cudaError_t geglu_forward(const void* x, void* y, int64_t rows, int64_t inner, DType dtype, cudaStream_t stream);

cudaError_t geglu_backward(const void* grad_out, const void* x, void* grad_x, int64_t rows, int64_t inner,
                           DType dtype, cudaStream_t stream);

}  // namespace bembed::cuda
