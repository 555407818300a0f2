// Fused InfoNCE (bembed_ext/ops/contrastive_loss.py): argument checks and the device-independent driver
// shared by the CPU and CUDA entry points.
//
// Inputs are the *global* batch in single-process layout: queries (M, D) and documents (K, D) with
// K = M·(1+m), documents 0..M-1 the positives of the queries in order, the rest hard negatives. The
// loss is this rank's share: with B = M / world_size and o = rank·B, the anchors are queries o..o+B-1
// (against all K documents) and, when bidirectional, positive documents o..o+B-1 (against all M queries):
//   loss = 1/B Σ_{i∈[o,o+B)} (lse_k s_ik − s_ii) + [bidirectional] 1/B Σ_{k∈[o,o+B)} (lse_i s_ik − s_kk),
// s_ik = q_i·d_k / τ. world_size = 1, rank = 0 is the ordinary single-process loss.
//
// The scores are never materialised: the driver walks column strips of S (a block of documents against the
// query rows that need it), one GEMM per strip, and folds each strip into an online (max, sum-of-exp) per
// query (rows) and an exact one per positive document (a strip holds whole columns). Backward recomputes
// each strip, turns it into dL/dS in place and applies two GEMMs. The device only supplies the strip GEMMs
// and three elementwise passes (see `Kernels` below).
//
// Precision. The statistics are kept as (shift c, sum Σ exp(s − c)), never folded into one log-sum-exp
// c + log Σ: at |s| ~ 1/τ that sum would round log Σ to a unit of ~1/τ's last place (2e-6 at τ = 0.05),
// and every probability exp(s − lse) would carry it. With the shift kept apart, s − c is exact for the
// scores that matter (Sterbenz) and the probabilities are as accurate as PyTorch's log_softmax makes them.
// The sums are double on every device: near convergence Σ = 1 + ε with ε the whole gradient of the row,
// which a float sum (folded strip after strip, 64 strips at B = 131072) would round away. The positives'
// own gradient, p_ii − 1 per direction, is tiny there and is worst computed as a probability minus 1; the
// forward saves it as expm1(−t) of each anchor's exact loss term t.
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/expm1.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "checks.h"

namespace bembed {

inline void check_contrastive_inputs(const at::Tensor& queries, const at::Tensor& documents, double temperature,
                                     int64_t world_size, int64_t rank, const char* op) {
  check_dim(queries, op, "queries", 2);
  check_dim(documents, op, "documents", 2);
  check_same_device(documents, queries, op, "documents", "queries");
  check_same_dtype(documents, queries, op, "documents", "queries");
  TORCH_CHECK_VALUE(documents.size(1) == queries.size(1), op, ": 'documents' (", documents.sizes(),
                    ") and 'queries' (", queries.sizes(), ") must have the same embedding dimension");
  TORCH_CHECK_VALUE(queries.size(0) >= 1, op, ": 'queries' must hold at least one row");
  TORCH_CHECK_VALUE(documents.size(0) % queries.size(0) == 0 && documents.size(0) >= queries.size(0), op,
                    ": 'documents' must have B·(1+m) rows (B positives then hard negatives) for B = ",
                    queries.size(0), " queries, got ", documents.size(0));
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op, ": 'temperature' must be > 0, got ",
                    temperature);
  TORCH_CHECK_VALUE(world_size >= 1 && queries.size(0) % world_size == 0, op, ": 'world_size' (", world_size,
                    ") must divide the number of queries (", queries.size(0), ")");
  TORCH_CHECK_VALUE(rank >= 0 && rank < world_size, op, ": 'rank' must be in [0, ", world_size, "), got ",
                    rank);
}

inline void check_contrastive_saved(const at::Tensor& grad_loss, const at::Tensor& queries,
                                    const at::Tensor& row_stats, const at::Tensor& col_stats,
                                    const at::Tensor& positive_grad, bool bidirectional, int64_t world_size,
                                    const char* op) {
  const int64_t B = queries.size(0) / world_size;
  TORCH_CHECK_VALUE(grad_loss.dim() == 0, op, ": 'grad_loss' must be a scalar, got shape ", grad_loss.sizes());
  check_same_device(grad_loss, queries, op, "grad_loss", "queries");
  check_same_device(row_stats, queries, op, "row_stats", "queries");
  check_same_device(col_stats, queries, op, "col_stats", "queries");
  check_same_device(positive_grad, queries, op, "positive_grad", "queries");
  TORCH_CHECK_VALUE(row_stats.dim() == 2 && row_stats.size(0) == 2 && row_stats.size(1) == B, op,
                    ": 'row_stats' must have shape (2, ", B, "), got ", row_stats.sizes());
  const int64_t columns = bidirectional ? B : 0;
  TORCH_CHECK_VALUE(col_stats.dim() == 2 && col_stats.size(0) == 2 && col_stats.size(1) == columns, op,
                    ": 'col_stats' must have shape (2, ", columns, "), got ", col_stats.sizes());
  TORCH_CHECK_VALUE(positive_grad.dim() == 1 && positive_grad.size(0) == B, op,
                    ": 'positive_grad' must have shape (", B, "), got ", positive_grad.sizes());
}

// One column strip: documents [k0, k0+nc) scored against queries [r0, r0+nr). Strips of positive documents
// that are this rank's reverse-direction anchors take every query row (exact column log-sum-exp); all other
// strips take only this rank's query rows.
struct ContrastiveStrip {
  int64_t k0, nc, r0, nr;
  bool column_anchors;
};

struct ContrastivePlan {
  int64_t B, offset, dim;
  std::vector<ContrastiveStrip> strips;
  int64_t max_strip_elems = 0;
};

// `budget` caps a strip at about budget score elements (at least 64 columns, so very large batches still
// get GEMM-friendly strips): the extra memory is one strip, never B×N.
inline ContrastivePlan make_contrastive_plan(int64_t M, int64_t K, int64_t dim, bool bidirectional,
                                             int64_t world_size, int64_t rank, int64_t budget) {
  ContrastivePlan plan;
  plan.B = M / world_size;
  plan.offset = rank * plan.B;
  plan.dim = dim;
  const int64_t o = plan.offset, B = plan.B;
  auto add = [&](int64_t begin, int64_t end, int64_t r0, int64_t nr, bool anchors) {
    const int64_t width = std::max<int64_t>(64, budget / nr);
    for (int64_t k0 = begin; k0 < end; k0 += width) {
      const int64_t nc = std::min(width, end - k0);
      plan.strips.push_back({k0, nc, r0, nr, anchors});
      plan.max_strip_elems = std::max(plan.max_strip_elems, nc * nr);
    }
  };
  if (bidirectional) {
    add(o, o + B, 0, M, true);
    add(0, o, o, B, false);
    add(o + B, K, o, B, false);
  } else {
    add(0, K, o, B, false);
  }
  return plan;
}

// A Kernels object supplies, for a strip S (nr × nc scores s = q·d/τ, contiguous, acc_t = float or double):
//   scores(S, q_rows, d_cols, inv_tau) S = q_rows · d_colsᵀ / τ (in acc_t, rounded once)
//   row_stats(S, nr, nc, lr0, nl, M, L)
//        online update of running max M and sum L = Σ exp(s − M) (double, length nl, this rank's queries)
//        with rows lr0..lr0+nl-1
//   column_stats(S, nr, nc, col_shift, col_sum)
//        each column's (shift c, Σ over all nr rows of exp(s − c)) (double) for any c at least the column's
//        maximum (the column-anchor strips, which hold whole columns)
//   scores_to_grad(S, nr, nc, lr0, nl, row_max, row_scale, col_shift|nullptr, col_scale|nullptr,
//                  diag_row, diag_col, ndiag, diag_values)
//        S ← exp(s − row_max)·row_scale on local rows + exp(s − col_shift)·col_scale when given, then the
//        ndiag diagonal entries (diag_row + t, diag_col + t) (the positives) ← diag_values[t]
//   grad_operand(S)                    the tensor used as dL/dS in the gradient GEMMs (S, or a copy in the
//                                      input dtype that scores_to_grad wrote)
//   accumulate(C, A, B)                C += A·B (C in acc_t)
//   acc_dtype(scalar type), budget     accumulation dtype; scores per strip
// Returns (loss, row_stats (2, B): running max and sum per anchor query, col_stats (2, B or 0): shift and
// sum per anchor document, positive_grad (B): Σ over directions of p_ii − 1), the last three float64.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_forward(
    const at::Tensor& queries, const at::Tensor& documents, double temperature, bool bidirectional,
    int64_t world_size, int64_t rank, Kernels& kernels) {
  const auto q = queries.contiguous();
  const auto d = documents.contiguous();
  const auto plan =
      make_contrastive_plan(q.size(0), d.size(0), q.size(1), bidirectional, world_size, rank, kernels.budget);
  const int64_t B = plan.B, o = plan.offset;
  const auto acc = kernels.acc_dtype(q.scalar_type());
  const auto acc_opts = q.options().dtype(acc);
  const double inv_tau = 1.0 / temperature;

  const auto stats_opts = q.options().dtype(at::kDouble);
  auto row_stats = at::empty({2, B}, stats_opts);
  auto running_max = row_stats.select(0, 0);
  auto running_sum = row_stats.select(0, 1);
  running_max.fill_(-std::numeric_limits<double>::infinity());
  running_sum.zero_();
  auto col_stats = at::empty({2, bidirectional ? B : 0}, stats_opts);
  // The positive scores s_ii, i ∈ [o, o+B), read out of the strips: the very values the maxima were taken
  // of, so a positive that is its row's maximum gives running_max − s_ii = 0 exactly.
  auto positive = at::empty({B}, acc_opts);
  auto buffer = at::empty({plan.max_strip_elems}, acc_opts);
  for (const auto& strip : plan.strips) {
    auto S = buffer.narrow(0, 0, strip.nr * strip.nc).view({strip.nr, strip.nc});
    kernels.scores(S, q.narrow(0, strip.r0, strip.nr), d.narrow(0, strip.k0, strip.nc), inv_tau);
    // each positive lies in exactly one strip: the one holding its column (anchor strips hold every row)
    const int64_t diag_begin = std::max({o, strip.k0, strip.r0});
    const int64_t ndiag = std::min({o + B, strip.k0 + strip.nc, strip.r0 + strip.nr}) - diag_begin;
    if (ndiag > 0) {
      positive.narrow(0, diag_begin - o, ndiag)
          .copy_(S.narrow(0, diag_begin - strip.r0, ndiag).narrow(1, diag_begin - strip.k0, ndiag).diagonal());
    }
    kernels.row_stats(S, strip.nr, strip.nc, o - strip.r0, B, running_max, running_sum);
    if (strip.column_anchors) {
      auto columns = col_stats.narrow(1, strip.k0 - o, strip.nc);
      kernels.column_stats(S, strip.nr, strip.nc, columns.select(0, 0), columns.select(0, 1));
    }
  }
  // Each anchor's term −log p_ii = (shift − s_ii) + log Σ: near convergence shift and s_ii are both ~1/τ
  // and cancel exactly, where (shift + log Σ) − s_ii would keep the rounding of the sum (one ulp of 1/τ).
  const auto positive_score = positive.to(at::kDouble);
  const auto row_term = (running_max - positive_score) + running_sum.log();
  auto total = row_term.sum();
  auto positive_grad = at::expm1(-row_term);
  if (bidirectional) {
    const auto col_term = (col_stats.select(0, 0) - positive_score) + col_stats.select(0, 1).log();
    total = total + col_term.sum();
    positive_grad.add_(at::expm1(-col_term));
  }
  auto loss = (total / static_cast<double>(B)).to(q.scalar_type());
  return {loss, row_stats, col_stats, positive_grad};
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor> contrastive_backward(const at::Tensor& grad_loss, const at::Tensor& queries,
                                                        const at::Tensor& documents, const at::Tensor& row_stats,
                                                        const at::Tensor& col_stats, const at::Tensor& positive_grad,
                                                        double temperature, bool bidirectional, int64_t world_size,
                                                        int64_t rank, Kernels& kernels) {
  const auto q = queries.contiguous();
  const auto d = documents.contiguous();
  const auto plan =
      make_contrastive_plan(q.size(0), d.size(0), q.size(1), bidirectional, world_size, rank, kernels.budget);
  const int64_t B = plan.B, o = plan.offset;
  const auto acc = kernels.acc_dtype(q.scalar_type());
  const auto acc_opts = q.options().dtype(acc);
  const double inv_tau = 1.0 / temperature;
  // dL/d(q·d) = (1/τB)·(p − [positive]). dS is rounded to the input dtype for its two GEMMs, so the strip
  // holds 2^14·(p − [positive]): in fp16's normal range (|·| ≤ 2^15 < 65504) for every p above 4e-9,
  // where (1/τB)·p would flush each in-batch negative to zero at B ≈ 10^5 (GradScaler cannot help: its
  // scale arrives as grad_loss). The power of two, 1/(τB) and the upstream gradient are applied in float32
  // at the end (no device sync for the scalar).
  constexpr double kGradScale = 16384.0;
  const double coef = inv_tau / static_cast<double>(B);
  // p = exp(s − shift)·(2^14 / Σ): the scale folds the normaliser and the power of two. (The shifts are
  // scores, so exact in acc_t.)
  const auto rows = row_stats.to(at::kDouble);
  const auto row_max = rows.select(0, 0).to(acc).contiguous();
  const auto row_scale = (kGradScale / rows.select(0, 1)).to(acc).contiguous();
  const auto cols = col_stats.to(at::kDouble);
  const auto col_shift = cols.select(0, 0).to(acc).contiguous();
  const auto col_scale = (kGradScale / cols.select(0, 1)).to(acc).contiguous();
  const auto diag_values = (positive_grad.to(at::kDouble) * kGradScale).to(acc).contiguous();

  auto grad_q = at::zeros(q.sizes(), acc_opts);
  auto grad_d = at::zeros(d.sizes(), acc_opts);
  auto buffer = at::empty({plan.max_strip_elems}, acc_opts);
  for (const auto& strip : plan.strips) {
    auto S = buffer.narrow(0, 0, strip.nr * strip.nc).view({strip.nr, strip.nc});
    const auto q_rows = q.narrow(0, strip.r0, strip.nr);
    const auto d_cols = d.narrow(0, strip.k0, strip.nc);
    kernels.scores(S, q_rows, d_cols, inv_tau);
    // Positives (i, i) for this rank's queries i that fall in this strip's columns: both directions' p − 1
    // in one saved value (in both directions they lie in the anchor strips).
    const int64_t diag_begin = std::max({o, strip.k0, strip.r0});
    const int64_t diag_end = std::min({o + B, strip.k0 + strip.nc, strip.r0 + strip.nr});
    const int64_t ndiag = std::max<int64_t>(0, diag_end - diag_begin);
    const auto diag = diag_values.narrow(0, ndiag > 0 ? diag_begin - o : 0, ndiag);
    at::Tensor shift_slice, scale_slice;
    if (strip.column_anchors) {
      shift_slice = col_shift.narrow(0, strip.k0 - o, strip.nc);
      scale_slice = col_scale.narrow(0, strip.k0 - o, strip.nc);
    }
    kernels.scores_to_grad(S, strip.nr, strip.nc, o - strip.r0, B, row_max, row_scale,
                           strip.column_anchors ? &shift_slice : nullptr, strip.column_anchors ? &scale_slice : nullptr,
                           diag_begin - strip.r0, diag_begin - strip.k0, ndiag, diag);
    const auto dS = kernels.grad_operand(S);
    auto grad_q_rows = grad_q.narrow(0, strip.r0, strip.nr);
    auto grad_d_cols = grad_d.narrow(0, strip.k0, strip.nc);
    kernels.accumulate(grad_q_rows, dS, d_cols);
    kernels.accumulate(grad_d_cols, dS.t(), q_rows);
  }
  const auto g = grad_loss.to(acc) * (coef / kGradScale);
  grad_q.mul_(g);
  grad_d.mul_(g);
  return {grad_q.to(q.scalar_type()), grad_d.to(d.scalar_type())};
}

}  // namespace bembed
