// Fused InfoNCE CUDA launchers (torch-free): the elementwise passes over one float32 score strip
// S (nr × nc, row-major, scores q·d/τ) of the driver in ../contrastive_loss.h. The strip GEMMs run in
// cuBLAS (tensor cores for fp16/bf16 inputs, fp32 output) from the binding.
#pragma once

#include <cstdint>

#include "dtype.cuh"

namespace bembed::cuda {

// Online max / sum-exp update of this rank's query rows lr0..lr0+nl-1 of S (one warp per row).
cudaError_t contrastive_row_stats(const float* S, int64_t nc, int64_t lr0, int64_t nl,
                                  float* running_max, float* running_sum, cudaStream_t stream);

// Exact log-sum-exp of each column of S over its nr rows. partial: workspace of
// 2 · contrastive_column_chunks(nr) · nc floats.
int64_t contrastive_column_chunks(int64_t nr);
cudaError_t contrastive_column_lse(const float* S, int64_t nr, int64_t nc, float* partial,
                                   float* lse, cudaStream_t stream);

// out (nr × nc, dtype) = coef·(exp(S − row_lse) on rows lr0..lr0+nl-1 + exp(S − col_lse) when col_lse)
// − coef·weight on the ndiag entries (diag_row + t, diag_col + t). out may alias S when dtype is float32.
cudaError_t contrastive_scores_to_grad(const float* S, void* out, DType dtype, int64_t nr, int64_t nc,
                                       int64_t lr0, int64_t nl, const float* row_lse, const float* col_lse,
                                       float coef, int64_t diag_row, int64_t diag_col, int64_t ndiag, float weight,
                                       cudaStream_t stream);

}  // namespace bembed::cuda
