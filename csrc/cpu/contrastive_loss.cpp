// Fused InfoNCE on CPU: the strip driver of ../contrastive_loss.h with MKL GEMMs (at::addmm) for the strips
// and vectorised single passes for the log-sum-exp statistics and the gradient tile. float32 and float64
// (float64 so gradcheck runs on the kernel itself). A strip holds the scores s = q·d/τ, scaled inside the
// GEMM and rounded once, so that the forward statistics and the backward probabilities see identical values
// (a score equal to its row's max then gives exactly exp(0)).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm.h>
#include <torch/library.h>

#include <vector>

#include "../contrastive_loss.h"

namespace bembed {
namespace {

using at::vec::Vectorized;

// exp_u20 (≤ 20 ulp, several times cheaper than the 1-ulp Sleef exp) is plenty for probabilities in
// float32; float64 keeps the accurate exp so that gradcheck sees a faithful float64 kernel.
inline Vectorized<float> fast_exp(const Vectorized<float>& x) { return x.exp_u20(); }
inline Vectorized<double> fast_exp(const Vectorized<double>& x) { return x.exp(); }

constexpr int64_t kRowGrain = 16;
// Sums of exps run in float vectors over blocks of this many terms, block totals in double: the rounding
// error then grows with the block, not with N (PyTorch's cascade sums are about this accurate).
constexpr int64_t kSumBlock = 256;
// How far a row's or column's statistic may lie below the shared exp shift of the one-exp paths below;
// e^-60 is far from float underflow (e^-87). Normalised inputs at τ ≥ 0.05 always qualify (spread ≤ 2/τ + log N).
constexpr double kFactorSpread = 60.0;

template <typename T>
void row_stats_kernel(const T* S, int64_t nc, int64_t lr0, int64_t nl, T* running_max, T* running_sum) {
  using V = Vectorized<T>;
  at::parallel_for(0, nl, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const T* row = S + (lr0 + j) * nc;
      const T tile_max = at::vec::reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, row, nc);
      const T new_max = std::max(running_max[j], tile_max);
      const V shift(-new_max);
      const int64_t vec_end = nc - nc % V::size();
      double sum = 0;
      int64_t k = 0;
      while (k < vec_end) {
        const int64_t block_end = std::min(vec_end, k + kSumBlock);
        V acc(0);
        for (; k < block_end; k += V::size()) acc += fast_exp(V::loadu(row + k) + shift);
        sum += at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
      }
      for (; k < nc; ++k) sum += std::exp(row[k] - new_max);
      running_sum[j] = running_sum[j] * std::exp(running_max[j] - new_max) + static_cast<T>(sum);
      running_max[j] = new_max;
    }
  });
}

// A strip holds whole columns, so each column's log-sum-exp is exact: max over the rows, then the sum.
// Work goes by column blocks of one vector: a block of a few thousand rows stays in L2 between the passes.
template <typename T>
void column_lse_kernel(const T* S, int64_t nr, int64_t nc, T* lse) {
  using V = Vectorized<T>;
  const int64_t nblocks = (nc + V::size() - 1) / V::size();
  at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t k0 = b * V::size();
      const int64_t width = std::min<int64_t>(V::size(), nc - k0);
      V mx(-std::numeric_limits<T>::infinity());
      for (int64_t i = 0; i < nr; ++i) mx = at::vec::maximum(mx, V::loadu(S + i * nc + k0, width));
      const V shift = V(0) - mx;
      double sum[V::size()] = {};
      T mx_out[V::size()], acc_out[V::size()];
      for (int64_t i0 = 0; i0 < nr; i0 += kSumBlock) {
        V acc(0);
        for (int64_t i = i0; i < std::min(nr, i0 + kSumBlock); ++i) {
          acc += fast_exp(V::loadu(S + i * nc + k0, width) + shift);
        }
        acc.store(acc_out);
        for (int64_t t = 0; t < V::size(); ++t) sum[t] += acc_out[t];
      }
      mx.store(mx_out);
      for (int64_t t = 0; t < width; ++t) lse[k0 + t] = mx_out[t] + static_cast<T>(std::log(sum[t]));
    }
  });
}

// Column-anchor strips need both statistics of every score. With G the strip's largest score, one exp per
// score serves both, e = exp(s − G), as long as no row or column maximum lies more than kFactorSpread below
// G (else their sums could underflow; then the caller falls back to the separate passes). Pass 1: row maxima
// and per-thread column maxima; pass 2: e, summed along rows and (per thread, then merged) down columns.
template <typename T>
bool fused_anchor_stats_kernel(const T* S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl,
                               T* running_max, T* running_sum, T* lse) {
  using V = Vectorized<T>;
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const int64_t threads = at::get_num_threads();
  const int64_t vec_end = nc - nc % V::size();
  std::vector<T> row_max(nr);
  std::vector<T> col_max(threads * nc, -kInf);
  at::parallel_for(0, nr, kRowGrain, [&](int64_t begin, int64_t end) {
    T* cmax = col_max.data() + at::get_thread_num() * nc;
    for (int64_t i = begin; i < end; ++i) {
      const T* row = S + i * nc;
      V rmax(-kInf);
      int64_t k = 0;
      for (; k < vec_end; k += V::size()) {
        const V s = V::loadu(row + k);
        rmax = at::vec::maximum(rmax, s);
        at::vec::maximum(V::loadu(cmax + k), s).store(cmax + k);
      }
      T m = at::vec::vec_reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, rmax);
      for (; k < nc; ++k) m = std::max(m, row[k]), cmax[k] = std::max(cmax[k], row[k]);
      row_max[i] = m;
    }
  });
  for (int64_t t = 1; t < threads; ++t) {
    for (int64_t k = 0; k < nc; ++k) col_max[k] = std::max(col_max[k], col_max[t * nc + k]);
  }
  const T top = *std::max_element(col_max.begin(), col_max.begin() + nc);
  const T low_col = *std::min_element(col_max.begin(), col_max.begin() + nc);
  const T low_row = nl > 0 ? *std::min_element(row_max.begin() + lr0, row_max.begin() + lr0 + nl) : top;
  if (!(top - std::min(low_col, low_row) <= kFactorSpread)) return false;

  const T G = top;
  std::vector<double> col_sum(threads * nc, 0.0);
  at::parallel_for(0, nr, kRowGrain, [&](int64_t begin, int64_t end) {
    double* csum = col_sum.data() + at::get_thread_num() * nc;
    std::vector<T> block(nc, T(0));  // float column sums over ≤ kSumBlock rows, then added to csum
    const V shift(-G);
    auto flush = [&] {
      for (int64_t k = 0; k < nc; ++k) csum[k] += block[k], block[k] = T(0);
    };
    for (int64_t i = begin; i < end; ++i) {
      const T* row = S + i * nc;
      double row_sum = 0;
      int64_t k = 0;
      while (k < vec_end) {
        const int64_t block_end = std::min(vec_end, k + kSumBlock);
        V acc(0);
        for (; k < block_end; k += V::size()) {
          const V e = fast_exp(V::loadu(row + k) + shift);
          acc += e;
          (V::loadu(block.data() + k) + e).store(block.data() + k);
        }
        row_sum += at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
      }
      for (; k < nc; ++k) {
        const T e = std::exp(row[k] - G);
        row_sum += e;
        block[k] += e;
      }
      if ((i - begin + 1) % kSumBlock == 0) flush();
      if (i >= lr0 && i < lr0 + nl) {
        const int64_t j = i - lr0;
        const T new_max = std::max(running_max[j], row_max[i]);
        running_sum[j] = running_sum[j] * std::exp(running_max[j] - new_max) +
                         static_cast<T>(row_sum * std::exp(static_cast<double>(G - new_max)));
        running_max[j] = new_max;
      }
    }
    flush();
  });
  for (int64_t k = 0; k < nc; ++k) {
    double total = 0;
    for (int64_t t = 0; t < threads; ++t) total += col_sum[t * nc + k];
    lse[k] = G + static_cast<T>(std::log(total));
  }
  return true;
}

// In place: S ← coef·(p_row + p_col) − coef·w on the positives, where p_row = exp(s − row_lse) on this
// rank's query rows and p_col = exp(s − col_lse) on column-anchor strips.
//
// On column-anchor strips both terms are needed for every score. When all the lse values involved lie within
// kFactorSpread of each other (always, for normalised inputs and τ ≥ 0.05), one exp per score suffices:
// p_row + p_col = exp(s − lo)·(exp(lo − row_lse) + exp(lo − col_lse)) with lo the smallest lse; s never
// exceeds a row's or column's lse, so the first factor stays below e^kFactorSpread.
template <typename T>
bool factored_scores_to_grad(T* S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl, const T* row_lse,
                             const T* col_lse, T coef) {
  using V = Vectorized<T>;
  T lo = std::numeric_limits<T>::infinity(), hi = -lo;
  for (int64_t j = 0; j < nl; ++j) lo = std::min(lo, row_lse[j]), hi = std::max(hi, row_lse[j]);
  for (int64_t k = 0; k < nc; ++k) lo = std::min(lo, col_lse[k]), hi = std::max(hi, col_lse[k]);
  if (!(hi - lo <= kFactorSpread)) return false;
  std::vector<T> col_factor(nc);
  for (int64_t k = 0; k < nc; ++k) col_factor[k] = std::exp(lo - col_lse[k]);
  at::parallel_for(0, nr, kRowGrain, [&](int64_t begin, int64_t end) {
    const V shift(-lo), c(coef);
    for (int64_t i = begin; i < end; ++i) {
      T* row = S + i * nc;
      const bool local = i >= lr0 && i < lr0 + nl;
      const V row_factor(local ? std::exp(lo - row_lse[i - lr0]) : T(0));
      for (int64_t k = 0; k < nc; k += V::size()) {
        const int64_t width = std::min<int64_t>(V::size(), nc - k);
        const V e = fast_exp(V::loadu(row + k, width) + shift);
        (e * (row_factor + V::loadu(col_factor.data() + k, width)) * c).store(row + k, width);
      }
    }
  });
  return true;
}

template <typename T>
void scores_to_grad_kernel(T* S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl, const T* row_lse,
                           const T* col_lse, T coef, int64_t diag_row, int64_t diag_col, int64_t ndiag, T weight) {
  using V = Vectorized<T>;
  const bool factored = col_lse && factored_scores_to_grad(S, nr, nc, lr0, nl, row_lse, col_lse, coef);
  if (!factored) {
    at::parallel_for(0, nr, kRowGrain, [&](int64_t begin, int64_t end) {
      const V c(coef);
      for (int64_t i = begin; i < end; ++i) {
        T* row = S + i * nc;
        const bool local = i >= lr0 && i < lr0 + nl;
        const V row_shift(local ? -row_lse[i - lr0] : T(0));
        for (int64_t k = 0; k < nc; k += V::size()) {
          const int64_t width = std::min<int64_t>(V::size(), nc - k);
          const V s = V::loadu(row + k, width);
          V p(0);
          if (local) p = fast_exp(s + row_shift);
          if (col_lse) p += fast_exp(s - V::loadu(col_lse + k, width));
          (p * c).store(row + k, width);
        }
      }
    });
  }
  for (int64_t t = 0; t < ndiag; ++t) S[(diag_row + t) * nc + diag_col + t] -= coef * weight;
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
      row_stats_kernel<scalar_t>(S.const_data_ptr<scalar_t>(), nc, lr0, nl,
                                 running_max.mutable_data_ptr<scalar_t>(), running_sum.mutable_data_ptr<scalar_t>());
    });
  }

  static void anchor_stats(const at::Tensor& S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl,
                           at::Tensor& running_max, at::Tensor& running_sum, at::Tensor lse) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "bembed_contrastive_anchor_stats", [&] {
      const auto* s = S.const_data_ptr<scalar_t>();
            auto* m = running_max.mutable_data_ptr<scalar_t>();
      auto* l = running_sum.mutable_data_ptr<scalar_t>();
      auto* out = lse.mutable_data_ptr<scalar_t>();
      if (!fused_anchor_stats_kernel<scalar_t>(s, nr, nc, lr0, nl, m, l, out)) {
        row_stats_kernel<scalar_t>(s, nc, lr0, nl, m, l);
        column_lse_kernel<scalar_t>(s, nr, nc, out);
      }
    });
  }

  static void scores_to_grad(at::Tensor& S, int64_t nr, int64_t nc, int64_t lr0, int64_t nl,
                             const at::Tensor& row_lse, const at::Tensor* col_lse, double coef, int64_t diag_row,
                             int64_t diag_col, int64_t ndiag, double weight) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "bembed_contrastive_scores_to_grad", [&] {
      scores_to_grad_kernel<scalar_t>(S.mutable_data_ptr<scalar_t>(), nr, nc, lr0,
                                      nl, row_lse.const_data_ptr<scalar_t>(),
                                      col_lse ? col_lse->const_data_ptr<scalar_t>() : nullptr,
                                      static_cast<scalar_t>(coef), diag_row, diag_col, ndiag,
                                      static_cast<scalar_t>(weight));
    });
  }

  static const at::Tensor& grad_operand(const at::Tensor& S) { return S; }

  static void accumulate(at::Tensor& C, const at::Tensor& A, const at::Tensor& B) { C.addmm_(A, B); }
};

constexpr auto kCpuDtypes = {at::kFloat, at::kDouble};

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss_fwd_cpu(const at::Tensor& queries,
                                                                        const at::Tensor& documents,
                                                                        double temperature, bool bidirectional,
                                                                        int64_t world_size, int64_t rank) {
  constexpr const char* op = "bembed.contrastive_loss_fwd";
  check_contrastive_inputs(queries, documents, temperature, world_size, rank, op);
  check_dtype(queries, op, "queries", kCpuDtypes);
  CpuKernels kernels;
  return contrastive_forward(queries, documents, temperature, bidirectional, world_size, rank, kernels);
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& queries,
                                                            const at::Tensor& documents, const at::Tensor& q_lse,
                                                            const at::Tensor& d_lse, double temperature,
                                                            bool bidirectional, int64_t world_size, int64_t rank) {
  constexpr const char* op = "bembed.contrastive_loss_bwd";
  check_contrastive_inputs(queries, documents, temperature, world_size, rank, op);
  check_dtype(queries, op, "queries", kCpuDtypes);
  check_contrastive_saved(grad_loss, queries, q_lse, d_lse, bidirectional, world_size, op);
  CpuKernels kernels;
  return contrastive_backward(grad_loss, queries, documents, q_lse, d_lse, temperature, bidirectional, world_size,
                              rank, kernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CPU, m) {
  m.impl("contrastive_loss_fwd", &contrastive_loss_fwd_cpu);
  m.impl("contrastive_loss_bwd", &contrastive_loss_bwd_cpu);
}

}  // namespace bembed
