// ALiBi flash attention on CPU: softmax(q·kᵀ·scale − slope·|i−j| + key mask)·v in tiles with an online
// softmax, the bias computed on the fly. Nothing L×L is ever allocated: each thread holds a few
// query × key tiles. The two tile products per step run through the BLAS torch links (MKL sgemm_ /
// dgemm_, found at load time; a plain loop otherwise), the softmax through at::vec.
//
// ALiBi makes far keys vanish: scale·q·k − slope·|i−j| ≤ |scale|·‖q_i‖·max‖k_j‖ − slope·dist. Keys where that
// bound lies more than a margin below the row's running max (forward; it starts at the diagonal score) or
// its final lse (backward) are left out: each tile is trimmed to the keys that can matter, and skipped when
// none can. In double the margin (746) makes every left-out exp() exactly 0, so float64 results are those
// of the full computation. In float the margin is ln(len) + 32·ln 2: all left-out keys of a row together
// weigh < 2^-32 of its softmax sum (which is ≥ 1), far below float32 rounding (2^-24) — invisible in the
// result, and it removes most of the work of the steep heads at long L. Fully masked key tiles are skipped.
//
// Forward: one task per (sequence, head, query tile); backward: one task per (sequence, head, group of key
// tiles), owning dK/dV of its tiles and accumulating dQ of its (sequence, head) — directly into dq when one
// group covers all key tiles, else into a private partial summed at the end. Tasks are handed out
// dynamically (atomic counter), so uneven tasks (varlen, skipped tiles) still balance over the threads.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../alibi_attention.h"
#include "alibi_attention_tiles.h"

namespace bembed {
namespace {

using namespace alibi_cpu;

constexpr int64_t kMaxHeadDim = 256;

// Query × key tile sizes. Measured on 2 AVX2 cores (B=1, H=12, D=64, L=512…8192): the forward gains from
// larger tiles (fewer MKL packing passes per FLOP); the backward is fastest with 64 × 256 (4–6% over
// 64 × 128, 128 × 128, 128 × 256 and 64 × 512 at every L): wider key tiles mean fewer, larger products,
// while 64 query rows keep its two score tiles and five tile products within L2.
constexpr Tiles kForwardTiles{128, 256};
// Sequences up to this length are done in one key tile per query tile: no online rescaling at all.
constexpr Tiles kForwardShortTiles{64, 512};
constexpr Tiles kBackwardTiles{64, 256};

struct Sequences {
  std::vector<int64_t> start;  // first token (varlen) or batch index × L (padded), in "token" units
  std::vector<int64_t> length;
  int64_t heads = 0;
};

struct Problem {
  Sequences seqs;
  const float* slopes = nullptr;  // (H,) or (B, H) contiguous
  bool slopes_per_batch = false;
  const bool* mask = nullptr;  // padded only: (B, L) contiguous, rows at seqs.start
  int64_t head_dim = 0;
  double scale = 1.0;
  float slope(int64_t seq, int64_t head) const {
    if (!slopes) return 0.f;
    return slopes[(slopes_per_batch ? seq * seqs.heads : 0) + head];
  }
};

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

template <typename acc_t>
struct ForwardScratch {
  ForwardScratch(const Tiles& t, int64_t d)
      : s(t.q * t.k), o(t.q * d), q(t.q * d), k(t.k * d), v(t.k * d), m(t.q), l(t.q), q_norm(t.q), mask(t.k) {}
  Buffer<acc_t> s, o, q, k, v, m, l, q_norm, mask;
};

// lse of query i of sequence b, head h: lse[lse_base[b] + h * lse_head_stride + i] ((B, H, L) or (H, T)).
template <typename scalar_t>
void forward(const Problem& p, const Operand<scalar_t>& Q, const Operand<scalar_t>& K, const Operand<scalar_t>& V,
             const Operand<scalar_t>& O, acc_type<scalar_t>* lse, const std::vector<int64_t>& lse_base,
             int64_t lse_head_stride) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = p.seqs.heads, D = p.head_dim;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t longest = *std::max_element(p.seqs.length.begin(), p.seqs.length.end());
  const Tiles tiles = longest <= kForwardShortTiles.k ? kForwardShortTiles : kForwardTiles;
  const int64_t BQ = tiles.q, BK = tiles.k;
  double flops = 0;
  struct Task {
    int64_t seq, head, q0;
  };
  std::vector<Task> tasks;
  for (int64_t b = 0; b < static_cast<int64_t>(p.seqs.start.size()); ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t q0 = 0; q0 < p.seqs.length[b]; q0 += BQ) tasks.push_back({b, h, q0});
      flops += 4.0 * D * static_cast<double>(p.seqs.length[b]) * p.seqs.length[b];
    }
  }
  // Longest sequences first, so that the dynamic hand-out ends with small tasks.
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const Task& a, const Task& b) { return p.seqs.length[a.seq] > p.seqs.length[b.seq]; });
  const auto keys = key_tiles<acc_t>(p.seqs.start, p.seqs.length, H, D, K, p.mask, BK);
  const int64_t count = static_cast<int64_t>(tasks.size());
  const double rounding = rounding_slack<acc_t>(D);
  run_tasks<ForwardScratch<acc_t>>(count, flops, tiles, D, [&](int64_t index, ForwardScratch<acc_t>& w) {
    const Task& task = tasks[index];
    const int64_t start = p.seqs.start[task.seq], len = p.seqs.length[task.seq], h = task.head, q0 = task.q0;
    const int64_t nq = std::min(BQ, len - q0);
    const acc_t slope = static_cast<acc_t>(p.slope(task.seq, h)), margin = skip_margin<acc_t>(len);
    const bool* mask = p.mask ? p.mask + start : nullptr;
    const int64_t first_tile = keys.first[task.seq];
    int64_t ldq;
    const acc_t* q = stage(Q.row(start + q0, h), Q.token_stride, nq, D, w.q.data(), &ldq);
    // The running max starts at the diagonal score (bias 0), a score of the row when key i is unmasked, less
    // its rounding: the tiles compute that score again (another sum order), and a start above every score they
    // compute would make every exp() 0. Far keys can then be trimmed from the first tile on.
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t i = start + q0 + r;
      w.q_norm[r] = std::sqrt(dot<acc_t>(q + r * ldq, q + r * ldq, D));
      const acc_t k_norm = std::sqrt(dot<acc_t>(K.row(i, h), K.row(i, h), D));
      w.m[r] = mask && !mask[q0 + r] ? -std::numeric_limits<acc_t>::infinity()
                                     : scale * dot<acc_t>(Q.row(i, h), K.row(i, h), D) -
                                           static_cast<acc_t>(rounding) * std::abs(scale) * w.q_norm[r] * k_norm;
      w.l[r] = 0;
    }
    std::fill(w.o.data(), w.o.data() + nq * D, acc_t(0));
    // Key tiles from the diagonal outward: the near tiles fix the row max that lets far tiles be skipped.
    const int64_t blocks = (len + BK - 1) / BK, diag = std::min(q0 / BK, blocks - 1);
    for (int64_t step = 0; step < 2 * blocks; ++step) {
      const int64_t kb = step % 2 == 0 ? diag + step / 2 : diag - (step + 1) / 2;
      if (kb < 0 || kb >= blocks || !keys.live[first_tile + kb]) continue;
      const auto [k0, k1] = live_keys<acc_t>(q0, nq, kb * BK, std::min(BK, len - kb * BK), w.q_norm.data(),
                                             keys.norm[(first_tile + kb) * H + h], scale, slope, margin, w.m.data(),
                                             rounding);
      const int64_t nk = k1 - k0;
      if (nk == 0) continue;
      int64_t ldk, ldv;
      const acc_t* k = stage(K.row(start + k0, h), K.token_stride, nk, D, w.k.data(), &ldk);
      const acc_t* v = stage(V.row(start + k0, h), V.token_stride, nk, D, w.v.data(), &ldv);
      acc_t* s = w.s.data();
      gemm<acc_t>(false, true, nq, nk, D, scale, q, ldq, k, ldk, acc_t(0), s, BK);
      const acc_t* key_mask = mask_row(mask ? mask + k0 : nullptr, nk, w.mask.data());
      for (int64_t r = 0; r < nq; ++r) {
        acc_t* srow = s + r * BK;
        const acc_t row_max = bias_row(srow, nk, q0 + r, k0, slope, key_mask);
        const acc_t m_new = std::max(w.m[r], row_max);
        if (m_new == -std::numeric_limits<acc_t>::infinity()) {  // every key so far masked
          std::fill(srow, srow + nk, acc_t(0));
          continue;
        }
        const acc_t sum = exp_row(srow, nk, m_new);
        const acc_t correction = std::exp(w.m[r] - m_new);
        if (correction != acc_t(1)) scale_row(w.o.data() + r * D, D, correction);
        w.l[r] = w.l[r] * correction + sum;
        w.m[r] = m_new;
      }
      gemm<acc_t>(false, false, nq, D, nk, acc_t(1), s, BK, v, ldv, acc_t(1), w.o.data(), D);
    }
    for (int64_t r = 0; r < nq; ++r) {
      scalar_t* out = O.row(start + q0 + r, h);
      const acc_t* o = w.o.data() + r * D;
      const acc_t inv = w.l[r] > 0 ? acc_t(1) / w.l[r] : acc_t(0);
      for (int64_t c = 0; c < D; ++c) out[c] = static_cast<scalar_t>(o[c] * inv);
      lse[lse_base[task.seq] + h * lse_head_stride + q0 + r] =
          w.l[r] > 0 ? w.m[r] + std::log(w.l[r]) : -std::numeric_limits<acc_t>::infinity();
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

template <typename acc_t>
struct BackwardScratch {
  BackwardScratch(const Tiles& t, int64_t d)
      : p(t.q * t.k), dp(t.q * t.k), dk(t.k * d), dv(t.k * d), q(t.q * d), dout(t.q * d), k(t.k * d), v(t.k * d),
        mask(t.k) {}
  Buffer<acc_t> p, dp, dk, dv, q, dout, k, v, mask;
  std::vector<acc_t> q_norm, lse, delta;  // per query of the (sequence, head)
};

template <typename scalar_t>
void backward(const Problem& p, const Operand<scalar_t>& dO, const Operand<scalar_t>& Q, const Operand<scalar_t>& K,
              const Operand<scalar_t>& V, const Operand<scalar_t>& O, const acc_type<scalar_t>* lse,
              const std::vector<int64_t>& lse_base, int64_t lse_head_stride, const Operand<scalar_t>& dQ,
              const Operand<scalar_t>& dK, const Operand<scalar_t>& dV, int64_t total_tokens) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = p.seqs.heads, D = p.head_dim, nseq = static_cast<int64_t>(p.seqs.start.size());
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t BQ = kBackwardTiles.q, BK = kBackwardTiles.k;
  // Enough (sequence, head, key group) tasks to keep every thread busy; groups > 1 need private dQ partials.
  int64_t max_blocks = 1;
  for (auto len : p.seqs.length) max_blocks = std::max(max_blocks, (len + BK - 1) / BK);
  const int64_t threads = at::get_num_threads();
  const int64_t partial_bytes = total_tokens * H * D * static_cast<int64_t>(sizeof(acc_t));
  int64_t groups = std::min(max_blocks, (2 * threads + nseq * H - 1) / std::max<int64_t>(nseq * H, 1));
  groups = std::max<int64_t>(1, std::min(groups, (int64_t(32) << 20) / std::max<int64_t>(partial_bytes, 1)));
  const bool direct_dq = groups == 1 && std::is_same_v<scalar_t, acc_t>;
  at::Tensor partials;
  Operand<acc_t> dq_acc;
  if (direct_dq) {
    dq_acc = {reinterpret_cast<acc_t*>(dQ.data), dQ.token_stride, dQ.head_stride};
  } else {
    partials = at::zeros({groups, total_tokens, H, D},
                         at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
    dq_acc = {partials.mutable_data_ptr<acc_t>(), H * D, D};
  }
  struct Task {
    int64_t seq, head, group;
  };
  std::vector<Task> tasks;
  double flops = 0;
  for (int64_t b = 0; b < nseq; ++b) {
    flops += 10.0 * D * H * static_cast<double>(p.seqs.length[b]) * p.seqs.length[b];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t g = 0; g < groups; ++g) tasks.push_back({b, h, g});
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const Task& a, const Task& b) { return p.seqs.length[a.seq] > p.seqs.length[b.seq]; });
  const auto keys = key_tiles<acc_t>(p.seqs.start, p.seqs.length, H, D, K, p.mask, BK);
  const int64_t count = static_cast<int64_t>(tasks.size());
  const double rounding = rounding_slack<acc_t>(D);
  run_tasks<BackwardScratch<acc_t>>(count, flops, kBackwardTiles, D, [&](int64_t index, BackwardScratch<acc_t>& w) {
    const Task& task = tasks[index];
    const int64_t start = p.seqs.start[task.seq], len = p.seqs.length[task.seq], h = task.head;
    const acc_t slope = static_cast<acc_t>(p.slope(task.seq, h)), margin = skip_margin<acc_t>(len);
    const bool* mask = p.mask ? p.mask + start : nullptr;
    const Operand<acc_t> dq{dq_acc.data + task.group * total_tokens * H * D * !direct_dq, dq_acc.token_stride,
                            dq_acc.head_stride};
    const int64_t first_tile = keys.first[task.seq];
    // Per query: ‖q_i‖ for the skip test, lse_i, and delta_i = Σ_d dO·O (the softmax backward's row term).
    w.q_norm.resize(len);
    w.lse.resize(len);
    w.delta.resize(len);
    for (int64_t i = 0; i < len; ++i) {
      const scalar_t* qi = Q.row(start + i, h);
      const scalar_t* gi = dO.row(start + i, h);
      const scalar_t* oi = O.row(start + i, h);
      w.q_norm[i] = std::sqrt(dot<acc_t>(qi, qi, D));
      w.lse[i] = lse[lse_base[task.seq] + h * lse_head_stride + i];
      w.delta[i] = dot<acc_t>(gi, oi, D);
    }
    const int64_t blocks = (len + BK - 1) / BK;
    for (int64_t kb = task.group; kb < blocks; kb += groups) {
      const int64_t k0 = kb * BK, nk = std::min(BK, len - k0);
      std::fill(w.dk.data(), w.dk.data() + nk * D, acc_t(0));
      std::fill(w.dv.data(), w.dv.data() + nk * D, acc_t(0));
      int64_t ldk, ldv;
      const acc_t* k = stage(K.row(start + k0, h), K.token_stride, nk, D, w.k.data(), &ldk);
      const acc_t* v = stage(V.row(start + k0, h), V.token_stride, nk, D, w.v.data(), &ldv);
      const acc_t* key_mask = mask_row(mask ? mask + k0 : nullptr, nk, w.mask.data());
      for (int64_t q0 = 0; q0 < len && keys.live[first_tile + kb]; q0 += BQ) {
        const int64_t nq = std::min(BQ, len - q0);
        // Only the keys [j0, j1) of this tile can matter to these queries (slots off.. of the tile buffers).
        const auto [j0, j1] = live_keys<acc_t>(q0, nq, k0, nk, w.q_norm.data() + q0,
                                               keys.norm[(first_tile + kb) * H + h], scale, slope, margin,
                                               w.lse.data() + q0, rounding);
        const int64_t nj = j1 - j0, off = j0 - k0;
        if (nj == 0) continue;
        const acc_t* kj = k + off * ldk;
        const acc_t* vj = v + off * ldv;
        const acc_t* mask_j = key_mask ? key_mask + off : nullptr;
        int64_t ldq, ldo;
        const acc_t* q = stage(Q.row(start + q0, h), Q.token_stride, nq, D, w.q.data(), &ldq);
        const acc_t* g = stage(dO.row(start + q0, h), dO.token_stride, nq, D, w.dout.data(), &ldo);
        acc_t* pt = w.p.data();
        acc_t* ds = w.dp.data();
        gemm<acc_t>(false, true, nq, nj, D, scale, q, ldq, kj, ldk, acc_t(0), pt, BK);
        for (int64_t r = 0; r < nq; ++r) {
          acc_t* prow = pt + r * BK;
          const acc_t row_lse = w.lse[q0 + r];
          if (row_lse == -std::numeric_limits<acc_t>::infinity()) {  // no valid key: P = 0
            std::fill(prow, prow + nj, acc_t(0));
            continue;
          }
          bias_row(prow, nj, q0 + r, j0, slope, mask_j);
          exp_row(prow, nj, row_lse);
        }
        gemm<acc_t>(true, false, nj, D, nq, acc_t(1), pt, BK, g, ldo, acc_t(1), w.dv.data() + off * D, D);
        gemm<acc_t>(false, true, nq, nj, D, acc_t(1), g, ldo, vj, ldv, acc_t(0), ds, BK);
        using Vec = Vectorized<acc_t>;
        for (int64_t r = 0; r < nq; ++r) {  // dS = P ∘ (dP − delta)
          acc_t* drow = ds + r * BK;
          const acc_t* prow = pt + r * BK;
          const Vec vdelta(w.delta[q0 + r]);
          int64_t j = 0;
          for (; j + Vec::size() <= nj; j += Vec::size()) {
            (Vec::loadu(prow + j) * (Vec::loadu(drow + j) - vdelta)).store(drow + j);
          }
          for (; j < nj; ++j) drow[j] = prow[j] * (drow[j] - w.delta[q0 + r]);
        }
        gemm<acc_t>(true, false, nj, D, nq, scale, ds, BK, q, ldq, acc_t(1), w.dk.data() + off * D, D);
        gemm<acc_t>(false, false, nq, D, nj, scale, ds, BK, kj, ldk, acc_t(1), dq.row(start + q0, h),
                    dq.token_stride);
      }
      for (int64_t r = 0; r < nk; ++r) {
        scalar_t* dkr = dK.row(start + k0 + r, h);
        scalar_t* dvr = dV.row(start + k0 + r, h);
        for (int64_t c = 0; c < D; ++c) {
          dkr[c] = static_cast<scalar_t>(w.dk[r * D + c]);
          dvr[c] = static_cast<scalar_t>(w.dv[r * D + c]);
        }
      }
    }
  });
  if (!direct_dq) {
    const at::Tensor summed = partials.sum(0);
    const acc_t* src = summed.const_data_ptr<acc_t>();
    for (int64_t b = 0; b < nseq; ++b) {
      for (int64_t i = 0; i < p.seqs.length[b]; ++i) {
        for (int64_t h = 0; h < H; ++h) {
          scalar_t* dst = dQ.row(p.seqs.start[b] + i, h);
          const acc_t* s = src + ((p.seqs.start[b] + i) * H + h) * D;
          for (int64_t c = 0; c < D; ++c) dst[c] = static_cast<scalar_t>(s[c]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------------

constexpr auto kCpuDtypes = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf};

// The BLAS tiles need unit-stride rows and a token stride of at least D (their leading dimension); other
// strides are taken as they come. An expanded tensor (token stride 0, e.g. the gradient of out.sum(0)) is
// copied: MKL refuses such a leading dimension with a message and leaves the tile unwritten. A single token
// may have any token stride (torch calls it contiguous whatever it is, so contiguous() would keep it): it
// addresses no other token, so the view only gets a leading dimension BLAS accepts.
at::Tensor rows_contiguous(const at::Tensor& t) {
  if (t.stride(-1) != 1 && t.size(-1) > 1) return t.contiguous();
  if (t.stride(-3) >= t.size(-1)) return t;
  if (t.size(-3) > 1) return t.contiguous();
  auto strides = t.strides().vec();
  strides[t.dim() - 3] = std::max<int64_t>(t.size(-1), 1);
  return t.as_strided(t.sizes(), strides);
}

void check_common(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t rank, const char* op) {
  check_alibi_qkv(q, k, v, rank, op);
  check_dtype(q, op, "q", kCpuDtypes);
  check_alibi_head_dim_range(q, op, kMaxHeadDim);
}

Problem make_problem(const at::Tensor& q, const std::optional<at::Tensor>& slopes, at::Tensor* slopes_keep,
                     double softmax_scale) {
  Problem p;
  p.seqs.heads = q.size(-2);
  p.head_dim = q.size(-1);
  p.scale = softmax_scale;
  if (slopes.has_value()) {
    *slopes_keep = slopes->contiguous();
    p.slopes = slopes_keep->const_data_ptr<float>();
    p.slopes_per_batch = slopes_keep->dim() == 2;
  }
  return p;
}

void padded_sequences(const at::Tensor& q, Problem* p, std::vector<int64_t>* lse_base) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  for (int64_t b = 0; b < B; ++b) {
    p->seqs.start.push_back(b * L);
    p->seqs.length.push_back(L);
    lse_base->push_back(b * H * L);
  }
}

void varlen_sequences(const at::Tensor& cu_seqlens, int64_t total, Problem* p,
                      std::vector<int64_t>* lse_base, const char* op) {
  // Checked on every call from a private copy, which the kernels then read: on the host the check is O(B) with
  // no device sync to save, so none of the CUDA path's cache (and its hole: writes the version counter misses,
  // through `.data` or numpy, would reach the kernels unchecked and read out of bounds).
  const auto cu = cu_seqlens.contiguous();
  const std::vector<int32_t> offsets(cu.const_data_ptr<int32_t>(), cu.const_data_ptr<int32_t>() + cu.size(0));
  check_cu_seqlens_values(offsets.data(), cu.size(0), total, op);
  for (int64_t b = 0; b + 1 < cu.size(0); ++b) {
    p->seqs.start.push_back(offsets[b]);
    p->seqs.length.push_back(offsets[b + 1] - offsets[b]);
    lse_base->push_back(offsets[b]);
  }
}

// Padded tensors (B, L, H, D) are addressed as tokens b·L + i of their (B·L, H, D) view: flatten copies only
// when the tokens are not evenly spaced (a batch stride other than L × the token stride).
at::Tensor tokens(const at::Tensor& t, bool padded) { return rows_contiguous(padded ? t.flatten(0, 1) : t); }

// The outputs are allocated contiguous, so their (B·L, H, D) view is a view: the kernels write into them.
at::Tensor output_tokens(const at::Tensor& t, bool padded) { return padded ? t.flatten(0, 1) : t; }

std::tuple<at::Tensor, at::Tensor> fwd_impl(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                            Problem& p, const std::vector<int64_t>& lse_base, at::IntArrayRef lse_shape,
                                            int64_t lse_head_stride, bool padded) {
  const auto q = tokens(q_in, padded), k = tokens(k_in, padded), v = tokens(v_in, padded);
  auto out = at::empty(q_in.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  auto lse = at::empty(lse_shape, q.options().dtype(alibi_lse_dtype(q.scalar_type())));
  if (q.numel() == 0) {
    lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "bembed_alibi_attention_fwd_cpu", [&] {
    forward<scalar_t>(p, operand<scalar_t>(q), operand<scalar_t>(k), operand<scalar_t>(v),
                      operand<scalar_t>(output_tokens(out, padded)), lse.mutable_data_ptr<acc_type<scalar_t>>(),
                      lse_base, lse_head_stride);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_impl(const at::Tensor& grad_out, const at::Tensor& q_in,
                                                        const at::Tensor& k_in, const at::Tensor& v_in,
                                                        const at::Tensor& out_in, const at::Tensor& lse_in,
                                                        Problem& p, const std::vector<int64_t>& lse_base,
                                                        int64_t lse_head_stride, bool padded) {
  const auto q = tokens(q_in, padded), k = tokens(k_in, padded), v = tokens(v_in, padded);
  const auto out = tokens(out_in, padded), g = tokens(grad_out, padded);
  const auto lse = lse_in.contiguous();
  const auto options = q.options().memory_format(at::MemoryFormat::Contiguous);
  auto dq = at::zeros(q_in.sizes(), options);
  auto dk = at::empty(q_in.sizes(), options);
  auto dv = at::empty(q_in.sizes(), options);
  if (q.numel() == 0) return {dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "bembed_alibi_attention_bwd_cpu", [&] {
    backward<scalar_t>(p, operand<scalar_t>(g), operand<scalar_t>(q), operand<scalar_t>(k), operand<scalar_t>(v),
                       operand<scalar_t>(out), lse.const_data_ptr<acc_type<scalar_t>>(), lse_base, lse_head_stride,
                       operand<scalar_t>(output_tokens(dq, padded)), operand<scalar_t>(output_tokens(dk, padded)),
                       operand<scalar_t>(output_tokens(dv, padded)), q.size(0));
  });
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor> alibi_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const std::optional<at::Tensor>& key_padding_mask,
                                                           const std::optional<at::Tensor>& alibi_slopes,
                                                           double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_fwd";
  check_common(q, k, v, 4, op);
  check_alibi_key_padding_mask(key_padding_mask, q, op);
  check_alibi_slopes(alibi_slopes, q, q.size(0), q.size(2), op);
  at::Tensor slopes_keep, mask_keep;
  Problem p = make_problem(q, alibi_slopes, &slopes_keep, softmax_scale);
  if (key_padding_mask.has_value()) {
    mask_keep = key_padding_mask->contiguous();
    p.mask = mask_keep.const_data_ptr<bool>();
  }
  std::vector<int64_t> lse_base;
  padded_sequences(q, &p, &lse_base);
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  return fwd_impl(q, k, v, p, lse_base, {B, H, L}, L, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alibi_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_bwd";
  check_common(q, k, v, 4, op);
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  check_alibi_backward_inputs(grad_out, out, lse, q, {B, H, L}, op);
  check_alibi_key_padding_mask(key_padding_mask, q, op);
  check_alibi_slopes(alibi_slopes, q, B, H, op);
  at::Tensor slopes_keep, mask_keep;
  Problem p = make_problem(q, alibi_slopes, &slopes_keep, softmax_scale);
  if (key_padding_mask.has_value()) {
    mask_keep = key_padding_mask->contiguous();
    p.mask = mask_keep.const_data_ptr<bool>();
  }
  std::vector<int64_t> lse_base;
  padded_sequences(q, &p, &lse_base);
  return bwd_impl(grad_out, q, k, v, out, lse, p, lse_base, L, true);
}

std::tuple<at::Tensor, at::Tensor> alibi_attention_varlen_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                  const at::Tensor& v, const at::Tensor& cu_seqlens,
                                                                  int64_t max_seqlen,
                                                                  const std::optional<at::Tensor>& alibi_slopes,
                                                                  double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_varlen_fwd";
  check_common(q, k, v, 3, op);
  check_cu_seqlens(cu_seqlens, max_seqlen, q, op);
  check_alibi_slopes(alibi_slopes, q, cu_seqlens.size(0) - 1, q.size(1), op);
  at::Tensor slopes_keep;
  Problem p = make_problem(q, alibi_slopes, &slopes_keep, softmax_scale);
  std::vector<int64_t> lse_base;
  varlen_sequences(cu_seqlens, q.size(0), &p, &lse_base, op);
  const int64_t T = q.size(0), H = q.size(1);
  return fwd_impl(q, k, v, p, lse_base, {H, T}, T, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alibi_attention_varlen_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale) {
  constexpr const char* op = "bembed.alibi_attention_varlen_bwd";
  check_common(q, k, v, 3, op);
  const int64_t T = q.size(0), H = q.size(1);
  check_alibi_backward_inputs(grad_out, out, lse, q, {H, T}, op);
  check_cu_seqlens(cu_seqlens, max_seqlen, q, op);
  check_alibi_slopes(alibi_slopes, q, cu_seqlens.size(0) - 1, H, op);
  at::Tensor slopes_keep;
  Problem p = make_problem(q, alibi_slopes, &slopes_keep, softmax_scale);
  std::vector<int64_t> lse_base;
  varlen_sequences(cu_seqlens, T, &p, &lse_base, op);
  return bwd_impl(grad_out, q, k, v, out, lse, p, lse_base, T, false);
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CPU, m) {
  m.impl("alibi_attention_fwd", &alibi_attention_fwd_cpu);
  m.impl("alibi_attention_bwd", &alibi_attention_bwd_cpu);
  m.impl("alibi_attention_varlen_fwd", &alibi_attention_varlen_fwd_cpu);
  m.impl("alibi_attention_varlen_bwd", &alibi_attention_varlen_bwd_cpu);
}

}  // namespace bembed
