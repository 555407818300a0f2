// Fused InfoNCE on CUDA: the strip driver of ../contrastive_loss.h with cuBLAS strip GEMMs (fp16/bf16
// inputs on tensor cores with float32 scores, mm.dtype) and the elementwise passes of contrastive_loss.cu.
// Statistics and gradient accumulators are float32; dL/dS is written in the input dtype for the two
// gradient GEMMs.
#include <ATen/ops/empty.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../contrastive_loss.h"
#include "contrastive_loss.cuh"
#include "launch.h"

namespace bembed {
namespace {

constexpr auto kCudaDtypes = {at::kFloat, at::kHalf, at::kBFloat16};

struct CudaKernels {
  // 2^28 float32 scores (1 GiB) per strip: at B = 131072 that is 2048 documents, a GEMM wide enough to
  // keep the tensor cores busy.
  int64_t budget = int64_t(1) << 28;
  at::ScalarType dtype;
  cuda::DType kernel_out_dtype;
  at::Tensor grad_buffer;  // dL/dS in the input dtype (fp16/bf16 inputs only)
  at::Tensor partial;      // column (max, sum) partials, double

  explicit CudaKernels(const at::Tensor& queries)
      : dtype(queries.scalar_type()), kernel_out_dtype(kernel_dtype(queries)) {}

  static at::ScalarType acc_dtype(at::ScalarType) { return at::kFloat; }

  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

  // S = q·dᵀ/τ in float32 (beta = 0: S's previous contents are ignored). For fp16/bf16 inputs, addmm's
  // out_dtype overload checks `self`: its first CUDA versions want it in the input dtype ("self and mat2
  // must have the same dtype"), torch 2.14 accepts the input or the out dtype. With beta = 0 self is never
  // read, so a broadcast zero in the input dtype satisfies both.
  void scores(at::Tensor& S, const at::Tensor& q_rows, const at::Tensor& d_cols, double inv_tau) {
    if (dtype == at::kFloat) {
      at::addmm_out(S, S, q_rows, d_cols.t(), 0, inv_tau);
    } else {
      if (!unread_bias.defined()) unread_bias = at::zeros({1, 1}, q_rows.options());
      at::addmm_out(S, unread_bias.expand({S.size(0), S.size(1)}), q_rows, d_cols.t(), at::kFloat, 0, inv_tau);
    }
  }

  void row_stats(const at::Tensor& S, int64_t, int64_t nc, int64_t lr0, int64_t nl,
                 at::Tensor& running_max, at::Tensor& running_sum) const {
    check_launch(cuda::contrastive_row_stats(S.const_data_ptr<float>(), nc, lr0, nl,
                                             running_max.mutable_data_ptr<double>(),
                                             running_sum.mutable_data_ptr<double>(), stream()),
                 "bembed.contrastive_loss_fwd");
  }

  void column_stats(const at::Tensor& S, int64_t nr, int64_t nc, at::Tensor col_shift, at::Tensor col_sum) {
    const int64_t needed = 2 * cuda::contrastive_column_chunks(nr) * nc;
    if (!partial.defined() || partial.numel() < needed) partial = at::empty({needed}, S.options().dtype(at::kDouble));
    check_launch(cuda::contrastive_column_stats(S.const_data_ptr<float>(), nr, nc, partial.mutable_data_ptr<double>(),
                                                col_shift.mutable_data_ptr<double>(),
                                                col_sum.mutable_data_ptr<double>(), stream()),
                 "bembed.contrastive_loss_fwd");
  }

  void scores_to_grad(at::Tensor& S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl, const at::Tensor& row_max,
                      const at::Tensor& row_scale, const at::Tensor* col_shift, const at::Tensor* col_scale,
                      int64_t diag_row, int64_t diag_col, int64_t ndiag, const at::Tensor& diag_values) {
    void* out = S.mutable_data_ptr();
    if (dtype != at::kFloat) {
      if (!grad_buffer.defined() || grad_buffer.numel() < nr * nc) {
        grad_buffer = at::empty({nr * nc}, S.options().dtype(dtype));
      }
      grad_view = grad_buffer.narrow(0, 0, nr * nc).view({nr, nc});
      out = grad_view.mutable_data_ptr();
    }
    check_launch(cuda::contrastive_scores_to_grad(S.const_data_ptr<float>(), out, kernel_out_dtype, nr, nc, lr0, nl,
                                                  row_max.const_data_ptr<float>(), row_scale.const_data_ptr<float>(),
                                                  col_shift ? col_shift->const_data_ptr<float>() : nullptr,
                                                  col_scale ? col_scale->const_data_ptr<float>() : nullptr, diag_row,
                                                  diag_col, ndiag, diag_values.const_data_ptr<float>(), stream()),
                 "bembed.contrastive_loss_bwd");
  }

  at::Tensor grad_operand(const at::Tensor& S) const { return dtype == at::kFloat ? S : grad_view; }

  // C (float32) += A·B with A, B in the input dtype: fp32-output GEMM, then an add.
  void accumulate(at::Tensor& C, const at::Tensor& A, const at::Tensor& B) const {
    if (dtype == at::kFloat) {
      C.addmm_(A, B);
    } else {
      C.add_(at::mm(A, B, at::kFloat));
    }
  }

 private:
  at::Tensor grad_view;
  at::Tensor unread_bias;  // addmm's `self` for the fp16/bf16 score GEMM (see scores)
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_loss_fwd_cuda(
    const at::Tensor& queries, const at::Tensor& documents, double temperature, bool bidirectional,
    int64_t world_size, int64_t rank) {
  constexpr const char* op = "bembed.contrastive_loss_fwd";
  check_contrastive_inputs(queries, documents, temperature, world_size, rank, op);
  check_dtype(queries, op, "queries", kCudaDtypes);
  const c10::cuda::CUDAGuard guard(queries.device());
  CudaKernels kernels(queries);
  return contrastive_forward(queries, documents, temperature, bidirectional, world_size, rank, kernels);
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& queries,
                                                             const at::Tensor& documents, const at::Tensor& row_stats,
                                                             const at::Tensor& col_stats,
                                                             const at::Tensor& positive_grad, double temperature,
                                                             bool bidirectional, int64_t world_size, int64_t rank) {
  constexpr const char* op = "bembed.contrastive_loss_bwd";
  check_contrastive_inputs(queries, documents, temperature, world_size, rank, op);
  check_dtype(queries, op, "queries", kCudaDtypes);
  check_contrastive_saved(grad_loss, queries, row_stats, col_stats, positive_grad, bidirectional, world_size, op);
  const c10::cuda::CUDAGuard guard(queries.device());
  CudaKernels kernels(queries);
  return contrastive_backward(grad_loss, queries, documents, row_stats, col_stats, positive_grad, temperature,
                              bidirectional, world_size, rank, kernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CUDA, m) {
  m.impl("contrastive_loss_fwd", &contrastive_loss_fwd_cuda);
  m.impl("contrastive_loss_bwd", &contrastive_loss_bwd_cuda);
}

}  // namespace bembed
