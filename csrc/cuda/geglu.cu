// GEGLU on CUDA: memory-bound, so each thread moves 16-byte packs (8 bf16/fp16 or 4 fp32 values) of a and
// b = a + inner, computes in fp32 with the exact erf GELU, and writes one pack. A grid-stride loop covers any
// number of rows. The scalar path (kPack = 1) serves widths or pointers that are not 16-byte aligned.
#include <algorithm>
#include <cstdint>

#include "geglu.cuh"

namespace bembed::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;

template <typename T, int kN>
struct alignas(sizeof(T) * kN) Pack {
  T v[kN];
};

// Φ(a) = ½(1 + erf(a/√2)), φ(a) = exp(−a²/2)/√(2π): gelu(a) = a·Φ(a), gelu'(a) = Φ(a) + a·φ(a).
__device__ __forceinline__ float normal_cdf(float a) { return 0.5f * (1.0f + erff(a * 0.70710678118654752f)); }
__device__ __forceinline__ float normal_pdf(float a) { return 0.39894228040143268f * expf(-0.5f * a * a); }

template <typename T, int kN>
__global__ void geglu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t inner) {
  using P = Pack<T, kN>;
  const int64_t packs_per_row = inner / kN;
  const int64_t total = rows * packs_per_row;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = p / packs_per_row;
    const int64_t col = (p - row * packs_per_row) * kN;
    const T* xa = x + row * 2 * inner + col;
    const P a = *reinterpret_cast<const P*>(xa);
    const P b = *reinterpret_cast<const P*>(xa + inner);
    P out;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const float av = to_float(a.v[i]);
      out.v[i] = from_float<T>(av * normal_cdf(av) * to_float(b.v[i]));
    }
    *reinterpret_cast<P*>(y + row * inner + col) = out;
  }
}

template <typename T, int kN>
__global__ void geglu_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x, T* __restrict__ dx,
                                      int64_t rows, int64_t inner) {
  using P = Pack<T, kN>;
  const int64_t packs_per_row = inner / kN;
  const int64_t total = rows * packs_per_row;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = p / packs_per_row;
    const int64_t col = (p - row * packs_per_row) * kN;
    const int64_t xa_offset = row * 2 * inner + col;
    const P g = *reinterpret_cast<const P*>(grad + row * inner + col);
    const P a = *reinterpret_cast<const P*>(x + xa_offset);
    const P b = *reinterpret_cast<const P*>(x + xa_offset + inner);
    P da, db;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const float av = to_float(a.v[i]);
      const float gv = to_float(g.v[i]);
      const float cdf = normal_cdf(av);
      da.v[i] = from_float<T>(gv * to_float(b.v[i]) * (cdf + av * normal_pdf(av)));
      db.v[i] = from_float<T>(gv * av * cdf);
    }
    *reinterpret_cast<P*>(dx + xa_offset) = da;
    *reinterpret_cast<P*>(dx + xa_offset + inner) = db;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int blocks_for(int64_t work) { return int(std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks)); }

template <typename T>
cudaError_t forward_typed(const void* x, void* y, int64_t rows, int64_t inner, cudaStream_t stream) {
  constexpr int kPack = 16 / sizeof(T);
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  if (inner % kPack == 0 && aligned16(x) && aligned16(y)) {
    geglu_forward_kernel<T, kPack><<<blocks_for(rows * inner / kPack), kThreads, 0, stream>>>(xt, yt, rows, inner);
  } else {
    geglu_forward_kernel<T, 1><<<blocks_for(rows * inner), kThreads, 0, stream>>>(xt, yt, rows, inner);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_typed(const void* grad, const void* x, void* dx, int64_t rows, int64_t inner,
                           cudaStream_t stream) {
  constexpr int kPack = 16 / sizeof(T);
  const T* gt = static_cast<const T*>(grad);
  const T* xt = static_cast<const T*>(x);
  T* dxt = static_cast<T*>(dx);
  if (inner % kPack == 0 && aligned16(grad) && aligned16(x) && aligned16(dx)) {
    geglu_backward_kernel<T, kPack><<<blocks_for(rows * inner / kPack), kThreads, 0, stream>>>(gt, xt, dxt, rows, inner);
  } else {
    geglu_backward_kernel<T, 1><<<blocks_for(rows * inner), kThreads, 0, stream>>>(gt, xt, dxt, rows, inner);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t geglu_forward(const void* x, void* y, int64_t rows, int64_t inner, DType dtype, cudaStream_t stream) {
  if (rows == 0 || inner == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return forward_typed<float>(x, y, rows, inner, stream);
    case DType::kFloat16: return forward_typed<__half>(x, y, rows, inner, stream);
    case DType::kBFloat16: return forward_typed<__nv_bfloat16>(x, y, rows, inner, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t geglu_backward(const void* grad_out, const void* x, void* grad_x, int64_t rows, int64_t inner,
                           DType dtype, cudaStream_t stream) {
  if (rows == 0 || inner == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return backward_typed<float>(grad_out, x, grad_x, rows, inner, stream);
    case DType::kFloat16: return backward_typed<__half>(grad_out, x, grad_x, rows, inner, stream);
    case DType::kBFloat16: return backward_typed<__nv_bfloat16>(grad_out, x, grad_x, rows, inner, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace bembed::cuda
