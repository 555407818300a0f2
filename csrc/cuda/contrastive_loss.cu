// Fused InfoNCE elementwise passes (see contrastive_loss.cuh) over strips of scores s = q·d/τ. Each pass
// reads the float32 strip once: statistics use the one-pass online (max, sum) update, which takes one exp
// per element except when the running max moves. Sums are double (the driver's precision note: near
// convergence a float sum at 1 + ε rounds ε, the row's whole gradient, away); the exps stay __expf, whose
// error is relative to each term.
#include <cfloat>
#include <cmath>

#include "contrastive_loss.cuh"

namespace bembed::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kColumnChunkRows = 512;

struct MaxSum {
  float max;
  double sum;
};

__device__ __forceinline__ void online_add(MaxSum& state, float x) {
  if (x > state.max) {
    state.sum = state.sum * static_cast<double>(__expf(state.max - x)) + 1.0;
    state.max = x;
  } else {
    state.sum += static_cast<double>(__expf(x - state.max));
  }
}

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0};
  return {m, a.sum * static_cast<double>(__expf(a.max - m)) + b.sum * static_cast<double>(__expf(b.max - m))};
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum state) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, state.max, offset), __shfl_xor_sync(0xffffffffu, state.sum, offset)};
    state = merge(state, other);
  }
  return state;
}

__global__ void row_stats_kernel(const float* __restrict__ S, int64_t nc, int64_t lr0, int64_t nl,
                                 double* __restrict__ running_max, double* __restrict__ running_sum) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp;
  if (j >= nl) return;
  const int lane = threadIdx.x % kWarp;
  const float* row = S + (lr0 + j) * nc;
  MaxSum state{-INFINITY, 0.0};
  for (int64_t k = lane; k < nc; k += kWarp) online_add(state, row[k]);
  state = warp_merge(state);
  if (lane == 0) {  // the running max is a score: exact as a float
    const MaxSum total = merge({static_cast<float>(running_max[j]), running_sum[j]}, state);
    running_max[j] = total.max;
    running_sum[j] = total.sum;
  }
}

// Grid (column blocks, row chunks): each thread folds one column over kColumnChunkRows rows (coalesced
// across the warp), leaving (max, sum) partials that column_merge_kernel combines.
__global__ void column_partial_kernel(const float* __restrict__ S, int64_t nr, int64_t nc,
                                      double* __restrict__ partial) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= nc) return;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kColumnChunkRows;
  const int64_t end = begin + kColumnChunkRows < nr ? begin + kColumnChunkRows : nr;
  MaxSum state{-INFINITY, 0.0};
  for (int64_t i = begin; i < end; ++i) online_add(state, S[i * nc + k]);
  double* out = partial + 2 * (static_cast<int64_t>(blockIdx.y) * nc + k);
  out[0] = state.max;
  out[1] = state.sum;
}

__global__ void column_merge_kernel(const double* __restrict__ partial, int64_t chunks, int64_t nc,
                                    double* __restrict__ col_max, double* __restrict__ col_sum) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= nc) return;
  MaxSum state{-INFINITY, 0.0};
  for (int64_t c = 0; c < chunks; ++c) {
    const double* p = partial + 2 * (c * nc + k);
    state = merge(state, {static_cast<float>(p[0]), p[1]});
  }
  col_max[k] = state.max;
  col_sum[k] = state.sum;
}

// One block per strip row, threads across its columns (coalesced). out may alias S (float32), so no
// __restrict__ on those two.
template <typename T>
__global__ void scores_to_grad_kernel(const float* S, T* out, int64_t nc, int64_t lr0, int64_t nl,
                                      const float* __restrict__ row_max, const float* __restrict__ row_scale,
                                      const float* __restrict__ col_shift, const float* __restrict__ col_scale,
                                      int64_t diag_row, int64_t diag_col, int64_t ndiag,
                                      const float* __restrict__ diag_values) {
  const int64_t i = blockIdx.x;
  const bool local = i >= lr0 && i < lr0 + nl;
  const float neg_max = local ? -row_max[i - lr0] : 0.f;
  const float scale = local ? row_scale[i - lr0] : 0.f;
  const int64_t t = i - diag_row;
  const bool has_diag = t >= 0 && t < ndiag;
  const int64_t diag_k = has_diag ? diag_col + t : -1;
  const float* row = S + i * nc;
  T* out_row = out + i * nc;
  for (int64_t k = threadIdx.x; k < nc; k += kThreads) {
    const float s = row[k];
    float p = local ? __expf(s + neg_max) * scale : 0.f;
    if (col_shift != nullptr) p += __expf(s - col_shift[k]) * col_scale[k];
    out_row[k] = from_float<T>(k == diag_k ? diag_values[t] : p);
  }
}

}  // namespace

cudaError_t contrastive_row_stats(const float* S, int64_t nc, int64_t lr0, int64_t nl,
                                  double* running_max, double* running_sum, cudaStream_t stream) {
  if (nl == 0) return cudaSuccess;
  const int64_t rows_per_block = kThreads / kWarp;
  const auto blocks = static_cast<unsigned int>((nl + rows_per_block - 1) / rows_per_block);
  row_stats_kernel<<<blocks, kThreads, 0, stream>>>(S, nc, lr0, nl, running_max, running_sum);
  return cudaGetLastError();
}

int64_t contrastive_column_chunks(int64_t nr) { return (nr + kColumnChunkRows - 1) / kColumnChunkRows; }

cudaError_t contrastive_column_stats(const float* S, int64_t nr, int64_t nc, double* partial, double* col_max,
                                     double* col_sum, cudaStream_t stream) {
  if (nc == 0) return cudaSuccess;
  const int64_t chunks = contrastive_column_chunks(nr);
  const dim3 grid(static_cast<unsigned int>((nc + kThreads - 1) / kThreads), static_cast<unsigned int>(chunks));
  column_partial_kernel<<<grid, kThreads, 0, stream>>>(S, nr, nc, partial);
  column_merge_kernel<<<static_cast<unsigned int>((nc + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      partial, chunks, nc, col_max, col_sum);
  return cudaGetLastError();
}

cudaError_t contrastive_scores_to_grad(const float* S, void* out, DType dtype, int64_t nr, int64_t nc,
                                       int64_t lr0, int64_t nl, const float* row_max, const float* row_scale,
                                       const float* col_shift, const float* col_scale, int64_t diag_row,
                                       int64_t diag_col, int64_t ndiag, const float* diag_values,
                                       cudaStream_t stream) {
  if (nr * nc == 0) return cudaSuccess;
  const auto grid = static_cast<unsigned int>(nr);
  switch (dtype) {
    case DType::kFloat32:
      scores_to_grad_kernel<float><<<grid, kThreads, 0, stream>>>(S, static_cast<float*>(out), nc, lr0, nl,
                                                                  row_max, row_scale, col_shift, col_scale,
                                                                  diag_row, diag_col, ndiag, diag_values);
      break;
    case DType::kFloat16:
      scores_to_grad_kernel<__half><<<grid, kThreads, 0, stream>>>(S, static_cast<__half*>(out), nc, lr0, nl,
                                                                   row_max, row_scale, col_shift, col_scale,
                                                                   diag_row, diag_col, ndiag, diag_values);
      break;
    case DType::kBFloat16:
      scores_to_grad_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
          S, static_cast<__nv_bfloat16*>(out), nc, lr0, nl, row_max, row_scale, col_shift, col_scale, diag_row,
          diag_col, ndiag, diag_values);
      break;
  }
  return cudaGetLastError();
}

}  // namespace bembed::cuda
