// Fused InfoNCE CUDA launchers (torch-free): the elementwise passes over one float32 score strip
// S (nr × nc, row-major, scores q·d/τ) of the driver in ../contrastive_loss.h. The strip GEMMs run in
// cuBLAS (tensor cores for fp16/bf16 inputs, fp32 output) from the binding.
#pragma once

#include <cstdint>

#include "dtype.cuh"

namespace bembed::cuda {

// Online max / sum-exp update of this rank's query rows lr0..lr0+nl-1 of S (one warp per row); the
// statistics are double (the max holds a float score exactly).
cudaError_t contrastive_row_stats(const float* S, int64_t nc, int64_t lr0, int64_t nl,
                                  double* running_max, double* running_sum, cudaStream_t stream);

// Exact statistics of each column of S over its nr rows: its max, and the sum of exp(s − max) (double).
// partial: workspace of 2 · contrastive_column_chunks(nr) · nc doubles.
int64_t contrastive_column_chunks(int64_t nr);
cudaError_t contrastive_column_stats(const float* S, int64_t nr, int64_t nc, double* partial, double* col_max,
                                     double* col_sum, cudaStream_t stream);

// out (nr × nc, dtype) = exp(S − row_max)·row_scale on rows lr0..lr0+nl-1 + exp(S − col_shift)·col_scale when
// col_shift, except the ndiag entries (diag_row + t, diag_col + t), which get diag_values[t]. out may
// alias S when dtype is float32.
cudaError_t contrastive_scores_to_grad(const float* S, void* out, DType dtype, int64_t nr, int64_t nc,
                                       int64_t lr0, int64_t nl, const float* row_max, const float* row_scale,
                                       const float* col_shift, const float* col_scale, int64_t diag_row,
                                       int64_t diag_col, int64_t ndiag, const float* diag_values,
                                       cudaStream_t stream);

}  // namespace bembed::cuda
