// Fused InfoNCE on CPU: the strip driver of ../contrastive_loss.h with MKL GEMMs (at::addmm) for the strips
// and vectorised single passes for the statistics and the gradient tile. float32 and float64 (float64 so
// gradcheck runs on the kernel itself). A strip holds the scores s = q·d/τ, scaled inside the GEMM and
// rounded once, so that the forward statistics and the backward probabilities see identical values (a
// score equal to its row's max then gives exactly exp(0)).
//
// Each statistic is shifted by its own row's or column's max and summed in double: its largest term is then
// exp(0) = 1 exactly and every other term's error is relative to that term, so the 20-ulp exp_u20 costs no
// accuracy (and makes the whole op ~5% faster than Sleef's 1-ulp exp at B 4096, D 768; 2026-11-23). A shift
// shared by rows and columns (one exp for both) and float sums did: near convergence they carried the whole
// gradient of a row. float64 keeps the accurate exp so that gradcheck sees a faithful float64 kernel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm.h>
#include <torch/library.h>

#include "../contrastive_loss.h"

namespace bembed {
namespace {

using at::vec::Vectorized;

constexpr int64_t kRowGrain = 16;

inline Vectorized<float> fast_exp(const Vectorized<float>& x) { return x.exp_u20(); }
inline Vectorized<double> fast_exp(const Vectorized<double>& x) { return x.exp(); }

// Sums of exps add each vector of exps into double lanes: a sum near 1 + ε (a positive far above its
// negatives) then keeps ε to the last bit of the float it is stored in, where float lanes lose an ulp or two
// of 1 — as much as the whole gradient of a nearly solved row.
template <typename T>
struct LaneSums {
  static constexpr int64_t kLanes = Vectorized<T>::size();
  double lane[kLanes] = {};

  void add(const Vectorized<T>& values) {
    T out[kLanes];
    values.store(out);
    for (int64_t t = 0; t < kLanes; ++t) lane[t] += out[t];
  }
  double total() const {
    double sum = 0;
    for (int64_t t = 0; t < kLanes; ++t) sum += lane[t];
    return sum;
  }
};

template <typename T>
void row_stats_kernel(const T* S, int64_t nc, int64_t lr0, int64_t nl, double* running_max, double* running_sum) {
  using V = Vectorized<T>;
  at::parallel_for(0, nl, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const T* row = S + (lr0 + j) * nc;
      const T tile_max = at::vec::reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, row, nc);
      const double new_max = std::max(running_max[j], static_cast<double>(tile_max));  // a score: exact in T
      const V shift(static_cast<T>(-new_max));
      const int64_t vec_end = nc - nc % V::size();
      LaneSums<T> sums;
      int64_t k = 0;
      for (; k < vec_end; k += V::size()) sums.add(fast_exp(V::loadu(row + k) + shift));
      double sum = sums.total();
      for (; k < nc; ++k) sum += std::exp(static_cast<double>(row[k]) - new_max);
      running_sum[j] = running_sum[j] * std::exp(running_max[j] - new_max) + sum;
      running_max[j] = new_max;
    }
  });
}

// A strip holds whole columns, so each column's statistics are exact: max over the rows, then the sum.
// Work goes by column blocks of one vector: a block of a few thousand rows stays in L2 between the passes.
template <typename T>
void column_stats_kernel(const T* S, int64_t nr, int64_t nc, double* col_shift, double* col_sum) {
  using V = Vectorized<T>;
  const int64_t nblocks = (nc + V::size() - 1) / V::size();
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t k0 = b * V::size();
      const int64_t width = std::min<int64_t>(V::size(), nc - k0);
      V mx(-std::numeric_limits<T>::infinity());
      for (int64_t i = 0; i < nr; ++i) mx = at::vec::maximum(mx, V::loadu(S + i * nc + k0, width));
      const V shift = V(0) - mx;
      LaneSums<T> sums;
      for (int64_t i = 0; i < nr; ++i) sums.add(fast_exp(V::loadu(S + i * nc + k0, width) + shift));
      T max_out[V::size()];
      mx.store(max_out);
      for (int64_t t = 0; t < width; ++t) {
        col_shift[k0 + t] = max_out[t];
        col_sum[k0 + t] = sums.lane[t];
      }
    }
  });
}

// In place: S ← p_row + p_col (already scaled), then the positives ← diag_values, where
// p_row = exp(s − row_max)·row_scale on this rank's query rows and p_col = exp(s − col_shift)·col_scale on
// column-anchor strips.
//
template <typename T>
void scores_to_grad_kernel(T* S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl, const T* row_max,
                           const T* row_scale, const T* col_shift, const T* col_scale, int64_t diag_row,
                           int64_t diag_col, int64_t ndiag, const T* diag_values) {
  using V = Vectorized<T>;
  at::parallel_for(0, nr, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* row = S + i * nc;
      const bool local = i >= lr0 && i < lr0 + nl;
      const V neg_max(local ? -row_max[i - lr0] : T(0)), scale(local ? row_scale[i - lr0] : T(0));
      for (int64_t k = 0; k < nc; k += V::size()) {
        const int64_t width = std::min<int64_t>(V::size(), nc - k);
        const V s = V::loadu(row + k, width);
        V p(0);
        if (local) p = fast_exp(s + neg_max) * scale;
        if (col_shift) p += fast_exp(s - V::loadu(col_shift + k, width)) * V::loadu(col_scale + k, width);
        p.store(row + k, width);
      }
    }
  });
  for (int64_t t = 0; t < ndiag; ++t) S[(diag_row + t) * nc + diag_col + t] = diag_values[t];
}

// ~4M scores (16 MB in float32) per strip: at B = 4096 that is 1024 documents, wide enough for MKL to run
// near its full-GEMM speed, and the elementwise passes stream it from L3.
struct CpuKernels {
  int64_t budget = int64_t(1) << 22;

  static at::ScalarType acc_dtype(at::ScalarType dtype) { return dtype; }

  // beta = 0: S's previous contents are ignored.
  static void scores(at::Tensor& S, const at::Tensor& q_rows, const at::Tensor& d_cols, double inv_tau) {
    at::addmm_out(S, S, q_rows, d_cols.t(), 0, inv_tau);
  }

  static void row_stats(const at::Tensor& S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl,
                        at::Tensor& running_max, at::Tensor& running_sum) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "bembed_contrastive_row_stats", [&] {
      row_stats_kernel<scalar_t>(S.const_data_ptr<scalar_t>(), nc, lr0, nl, running_max.mutable_data_ptr<double>(),
                                 running_sum.mutable_data_ptr<double>());
    });
  }

  static void column_stats(const at::Tensor& S, int64_t nr, int64_t nc, at::Tensor col_shift, at::Tensor col_sum) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "bembed_contrastive_column_stats", [&] {
      column_stats_kernel<scalar_t>(S.const_data_ptr<scalar_t>(), nr, nc, col_shift.mutable_data_ptr<double>(),
                                    col_sum.mutable_data_ptr<double>());
    });
  }

  static void scores_to_grad(at::Tensor& S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl,
                             const at::Tensor& row_max, const at::Tensor& row_scale, const at::Tensor* col_shift,
                             const at::Tensor* col_scale, int64_t diag_row, int64_t diag_col, int64_t ndiag,
                             const at::Tensor& diag_values) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "bembed_contrastive_scores_to_grad", [&] {
      scores_to_grad_kernel<scalar_t>(S.mutable_data_ptr<scalar_t>(), nr, nc, lr0, nl,
                                      row_max.const_data_ptr<scalar_t>(), row_scale.const_data_ptr<scalar_t>(),
                                      col_shift ? col_shift->const_data_ptr<scalar_t>() : nullptr,
                                      col_scale ? col_scale->const_data_ptr<scalar_t>() : nullptr, diag_row,
                                      diag_col, ndiag, diag_values.const_data_ptr<scalar_t>());
    });
  }

  static const at::Tensor& grad_operand(const at::Tensor& S) { return S; }

  static void accumulate(at::Tensor& C, const at::Tensor& A, const at::Tensor& B) { C.addmm_(A, B); }
};

constexpr auto kCpuDtypes = {at::kFloat, at::kDouble};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_loss_fwd_cpu(
    const at::Tensor& queries, const at::Tensor& documents, double temperature, bool bidirectional,
    int64_t world_size, int64_t rank) {
  constexpr const char* op = "bembed.contrastive_loss_fwd";
  check_contrastive_inputs(queries, documents, temperature, world_size, rank, op);
  check_dtype(queries, op, "queries", kCpuDtypes);
  CpuKernels kernels;
  return contrastive_forward(queries, documents, temperature, bidirectional, world_size, rank, kernels);
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& queries,
                                                            const at::Tensor& documents, const at::Tensor& row_stats,
                                                            const at::Tensor& col_stats,
                                                            const at::Tensor& positive_grad, double temperature,
                                                            bool bidirectional, int64_t world_size, int64_t rank) {
  constexpr const char* op = "bembed.contrastive_loss_bwd";
  check_contrastive_inputs(queries, documents, temperature, world_size, rank, op);
  check_dtype(queries, op, "queries", kCpuDtypes);
  check_contrastive_saved(grad_loss, queries, row_stats, col_stats, positive_grad, bidirectional, world_size, op);
  CpuKernels kernels;
  return contrastive_backward(grad_loss, queries, documents, row_stats, col_stats, positive_grad, temperature,
                              bidirectional, world_size, rank, kernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CPU, m) {
  m.impl("contrastive_loss_fwd", &contrastive_loss_fwd_cpu);
  m.impl("contrastive_loss_bwd", &contrastive_loss_bwd_cpu);
}

}  // namespace bembed
