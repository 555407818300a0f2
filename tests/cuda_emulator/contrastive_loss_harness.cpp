// C entry points for running csrc/cuda/contrastive_loss.cu (the fused InfoNCE elementwise passes) under the host
// emulation (ctypes from tests/test_contrastive_loss_cuda_emulated.py). build.py rewrites the kernel launches
// of a copy of the source into calls to emu::launch, then includes it here.
#include "contrastive_loss.cu"

extern "C" int emu_contrastive_row_stats(const float* S, int64_t nc, int64_t lr0, int64_t nl, double* running_max,
                                         double* running_sum) {
  return bembed::cuda::contrastive_row_stats(S, nc, lr0, nl, running_max, running_sum, nullptr);
}

extern "C" int64_t emu_contrastive_column_chunks(int64_t nr) { return bembed::cuda::contrastive_column_chunks(nr); }

extern "C" int emu_contrastive_column_stats(const float* S, int64_t nr, int64_t nc, double* partial, double* col_max,
                                            double* col_sum) {
  return bembed::cuda::contrastive_column_stats(S, nr, nc, partial, col_max, col_sum, nullptr);
}

extern "C" int emu_contrastive_scores_to_grad(const float* S, void* out, int dtype, int64_t nr, int64_t nc, int64_t lr0,
                                              int64_t nl, const float* row_max, const float* row_scale,
                                              const float* col_shift, const float* col_scale, int64_t diag_row,
                                              int64_t diag_col, int64_t ndiag, const float* diag_values) {
  return bembed::cuda::contrastive_scores_to_grad(S, out, bembed::cuda::DType(dtype), nr, nc, lr0, nl, row_max,
                                                  row_scale, col_shift, col_scale, diag_row, diag_col, ndiag,
                                                  diag_values, nullptr);
}
