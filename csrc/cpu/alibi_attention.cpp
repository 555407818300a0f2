// ALiBi flash attention on CPU: softmax(q·kᵀ·scale − slope·|i−j| + key mask)·v in tiles with an online
// softmax, the bias computed on the fly. Nothing L×L is ever allocated: each thread holds a few
// query × key tiles. The two tile products per step run through the BLAS torch links (MKL sgemm_ /
// dgemm_, found at load time; a plain loop otherwise), the softmax through at::vec.
//
// ALiBi makes far keys vanish: scale·q·k − slope·|i−j| ≤ |scale|·‖q_i‖·max‖k_j‖ − slope·dist. When that bound
// lies more than a margin below the row's running max (forward) or its final lse (backward), the tile is
// skipped. In double the margin (746) makes every skipped exp() exactly 0, so float64 results are those of
// the full computation. In float the margin is ln(len) + 32·ln 2: all skipped keys of a row together weigh
// < 2^-32 of its softmax sum (which is ≥ 1), far below float32 rounding (2^-24) — invisible in the result,
// and it removes most of the work of the steep heads at long L. Fully masked key tiles are skipped too.
//
// Forward: one task per (sequence, head, query tile); backward: one task per (sequence, head, group of key
// tiles), owning dK/dV of its tiles and accumulating dQ of its (sequence, head) — directly into dq when one
// group covers all key tiles, else into a private partial summed at the end. Tasks are handed out
// dynamically (atomic counter), so uneven tasks (varlen, skipped tiles) still balance over the threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../alibi_attention.h"

namespace bembed {
namespace {

using at::vec::Vectorized;

constexpr int64_t kMaxHeadDim = 256;

// Query × key tile sizes. Measured on 2 AVX2 cores (B=1, H=12, D=64, L=512…2048): the forward gains from
// larger tiles (fewer MKL packing passes per FLOP); the backward keeps five tile products and two score
// tiles per step in L2 with smaller ones, and finer key tiles let more ALiBi-negligible work be skipped.
struct Tiles {
  int64_t q, k;
};
constexpr Tiles kForwardTiles{128, 256};
constexpr Tiles kBackwardTiles{64, 128};

// ---------------------------------------------------------------------------------------------------
// GEMM on row-major tiles: C = alpha·op(A)·op(B) + beta·C (beta = 0 never reads C).
// ---------------------------------------------------------------------------------------------------

template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*, const T*,
                             const int*, const T*, const int*, const T*, T*, const int*);

template <typename T>
FortranGemm<T> find_blas_gemm(const char* name) {
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  void* fn = dlsym(lib ? lib : RTLD_DEFAULT, name);
  return reinterpret_cast<FortranGemm<T>>(fn);
}

template <typename T>
FortranGemm<T> blas_gemm() {
  static const FortranGemm<T> fn = find_blas_gemm<T>(std::is_same_v<T, double> ? "dgemm_" : "sgemm_");
  return fn;
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (auto fn = blas_gemm<T>()) {
    // Column-major BLAS sees each row-major matrix transposed: Cᵀ = op(B)ᵀ·op(A)ᵀ.
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
    const int ila = static_cast<int>(lda), ilb = static_cast<int>(ldb), ilc = static_cast<int>(ldc);
    fn(&tb, &ta, &in, &im, &ik, &alpha, b, &ilb, a, &ila, &beta, c, &ilc);
    return;
  }
  for (int64_t i = 0; i < m; ++i) {
    T* crow = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) crow[j] = beta == T(0) ? T(0) : beta * crow[j];
    for (int64_t p = 0; p < k; ++p) {
      const T av = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
      for (int64_t j = 0; j < n; ++j) crow[j] += av * (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Layout: one (sequence, head) is a run of rows with a fixed stride; the kernels see it through SeqHead.
// ---------------------------------------------------------------------------------------------------

// Tiles accumulate in float (double for double inputs, which also keep a double lse for gradcheck).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename acc_t>
acc_t skip_margin(int64_t len) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return acc_t(746);  // exp(x) rounds to 0 in double below about −745.1
  } else {
    return std::log(static_cast<acc_t>(std::max<int64_t>(len, 1))) + acc_t(32) * acc_t(M_LN2);
  }
}

struct Sequences {
  std::vector<int64_t> start;  // first token (varlen) or batch index × L (padded), in "token" units
  std::vector<int64_t> length;
  int64_t heads = 0;
};

template <typename scalar_t>
struct Operand {  // element (token t, head h, d) lives at data[t * token_stride + h * head_stride + d]
  scalar_t* data;
  int64_t token_stride, head_stride;
  scalar_t* row(int64_t token, int64_t head) const { return data + token * token_stride + head * head_stride; }
};

// A tensor (…, H, D) viewed as tokens × heads; padded (B, L, H, D) tensors are flattened to (B·L, H, D).
template <typename scalar_t>
Operand<scalar_t> operand(const at::Tensor& t) {
  return {const_cast<scalar_t*>(t.const_data_ptr<scalar_t>()), t.stride(-3), t.stride(-2)};
}

// Tiles of scalar_t rows are read as acc_t: in place when the types agree, else converted into `buffer`.
template <typename scalar_t, typename acc_t>
const acc_t* stage(const scalar_t* src, int64_t ld, int64_t rows, int64_t d, acc_t* buffer, int64_t* ld_out) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    *ld_out = ld;
    return src;
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < d; ++c) buffer[r * d + c] = static_cast<acc_t>(src[r * ld + c]);
    }
    *ld_out = d;
    return buffer;
  }
}

template <typename acc_t, typename scalar_t>
acc_t dot(const scalar_t* a, const scalar_t* b, int64_t d) {
  acc_t sum = 0;
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using V = Vectorized<acc_t>;
    V acc(acc_t(0));
    for (; c + V::size() <= d; c += V::size()) acc = at::vec::fmadd(V::loadu(a + c), V::loadu(b + c), acc);
    alignas(64) acc_t lanes[V::size()];
    acc.store(lanes);
    for (int64_t w = 0; w < V::size(); ++w) sum += lanes[w];
  }
  for (; c < d; ++c) sum += static_cast<acc_t>(a[c]) * static_cast<acc_t>(b[c]);
  return sum;
}

// Per key tile of every (sequence, head): the largest ‖k_j‖ (for the skip test) and whether it holds any
// unmasked key. Computed once per call and shared by all tasks.
template <typename acc_t>
struct KeyTiles {
  std::vector<int64_t> first;  // per sequence: index of its first tile
  std::vector<acc_t> norm;     // [tile * heads + head]
  std::vector<char> live;      // [tile]
};

template <typename acc_t, typename scalar_t>
KeyTiles<acc_t> key_tiles(const std::vector<int64_t>& starts, const std::vector<int64_t>& lengths, int64_t heads,
                          int64_t d, const Operand<scalar_t>& k, const bool* mask, int64_t block_k) {
  KeyTiles<acc_t> tiles;
  std::vector<int64_t> tile_seq;
  for (size_t b = 0; b < starts.size(); ++b) {
    tiles.first.push_back(static_cast<int64_t>(tile_seq.size()));
    for (int64_t k0 = 0; k0 < lengths[b]; k0 += block_k) tile_seq.push_back(static_cast<int64_t>(b));
  }
  const int64_t count = static_cast<int64_t>(tile_seq.size());
  tiles.norm.assign(count * heads, acc_t(0));
  tiles.live.assign(count, mask ? 0 : 1);
  at::parallel_for(0, count, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = tile_seq[t], k0 = (t - tiles.first[b]) * block_k;
      const int64_t j0 = starts[b] + k0, j1 = starts[b] + std::min(lengths[b], k0 + block_k);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t h = 0; h < heads; ++h) {
          const scalar_t* row = k.row(j, h);
          tiles.norm[t * heads + h] = std::max(tiles.norm[t * heads + h], std::sqrt(dot<acc_t>(row, row, d)));
        }
        if (mask && mask[j]) tiles.live[t] = 1;
      }
    }
  });
  return tiles;
}

// The key padding mask of one tile as an additive row (0 or −inf); nullptr without a mask.
template <typename acc_t>
const acc_t* mask_row(const bool* mask, int64_t nk, acc_t* buffer) {
  if (!mask) return nullptr;
  for (int64_t j = 0; j < nk; ++j) buffer[j] = mask[j] ? acc_t(0) : -std::numeric_limits<acc_t>::infinity();
  return buffer;
}

// True when every score of the tile (rows q0.., keys k0..k0+nk) lies `margin` below its row's reference
// (running max or lse): the tile's weight is negligible (see the top of the file).
template <typename acc_t>
bool tile_vanishes(int64_t q0, int64_t nq, int64_t k0, int64_t nk, const acc_t* q_norm, acc_t k_norm, acc_t scale,
                   acc_t slope, acc_t margin, const acc_t* row_ref) {
  if (!(slope > 0)) return false;
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t i = q0 + r;
    const int64_t dist = i < k0 ? k0 - i : (i >= k0 + nk ? i - (k0 + nk - 1) : 0);
    const acc_t bound = std::abs(scale) * q_norm[r] * k_norm - slope * static_cast<acc_t>(dist);
    if (!(bound - row_ref[r] < -margin)) return false;
  }
  return true;
}

// s[j] ← s[j] − slope·|i − (k0 + j)| + mask_add[j] for one score row; returns its max.
template <typename acc_t>
acc_t bias_row(acc_t* s, int64_t nk, int64_t i, int64_t k0, acc_t slope, const acc_t* mask_add) {
  using V = Vectorized<acc_t>;
  constexpr int64_t W = V::size();
  const V vi(static_cast<acc_t>(i - k0)), vslope(-slope), step(static_cast<acc_t>(W));
  V pos = V::arange(acc_t(0), acc_t(1));
  V vmax(-std::numeric_limits<acc_t>::infinity());
  int64_t j = 0;
  for (; j + W <= nk; j += W, pos = pos + step) {
    V x = at::vec::fmadd((vi - pos).abs(), vslope, V::loadu(s + j));
    if (mask_add) x = x + V::loadu(mask_add + j);
    x.store(s + j);
    vmax = at::vec::maximum(vmax, x);
  }
  alignas(64) acc_t lanes[W];
  vmax.store(lanes);
  acc_t row_max = *std::max_element(lanes, lanes + W);
  for (; j < nk; ++j) {
    acc_t x = s[j] - slope * static_cast<acc_t>(std::abs(i - k0 - j));
    if (mask_add) x += mask_add[j];
    s[j] = x;
    row_max = std::max(row_max, x);
  }
  return row_max;
}

// s[j] ← exp(s[j] − shift); returns the row sum.
template <typename acc_t>
acc_t exp_row(acc_t* s, int64_t nk, acc_t shift) {
  using V = Vectorized<acc_t>;
  constexpr int64_t W = V::size();
  const V vshift(shift);
  V vsum(acc_t(0));
  int64_t j = 0;
  for (; j + W <= nk; j += W) {
    const V e = (V::loadu(s + j) - vshift).exp_u20();
    e.store(s + j);
    vsum = vsum + e;
  }
  if (j < nk) {
    const V e = (V::loadu(s + j, nk - j) - vshift).exp_u20();
    e.store(s + j, nk - j);
    alignas(64) acc_t tail[W] = {};
    e.store(tail, nk - j);
    vsum = vsum + V::loadu(tail);
  }
  alignas(64) acc_t lanes[W];
  vsum.store(lanes);
  acc_t sum = 0;
  for (int64_t w = 0; w < W; ++w) sum += lanes[w];
  return sum;
}

template <typename acc_t>
void scale_row(acc_t* x, int64_t n, acc_t factor) {
  using V = Vectorized<acc_t>;
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) (V::loadu(x + j) * V(factor)).store(x + j);
  for (; j < n; ++j) x[j] *= factor;
}

// Runs `work(task, thread_scratch)` for task in [0, count), handed out dynamically. Calls with little work
// (≲ 1 MFLOP) stay on the calling thread: waking the pool would cost more than it saves.
template <typename Scratch, typename Work>
void run_tasks(int64_t count, double flops, const Tiles& tiles, int64_t head_dim, const Work& work) {
  if (count == 0) return;
  std::atomic<int64_t> next{0};
  const int64_t threads = flops < 1e6 ? 1 : std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      Scratch scratch(tiles, head_dim);
      for (int64_t task = next++; task < count; task = next++) work(task, scratch);
    }
  });
}

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
  std::vector<acc_t> s, o, q, k, v, m, l, q_norm, mask;
};

// lse is addressed as lse[head * lse_head_stride + token] (padded: (B, H, L) → token counts within the
// sequence plus b·H·L; handled by lse_offset).
template <typename scalar_t>
void forward(const Problem& p, const Operand<scalar_t>& Q, const Operand<scalar_t>& K, const Operand<scalar_t>& V,
             const Operand<scalar_t>& O, acc_type<scalar_t>* lse, const std::vector<int64_t>& lse_base,
             int64_t lse_head_stride) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = p.seqs.heads, D = p.head_dim;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t BQ = kForwardTiles.q, BK = kForwardTiles.k;
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
  run_tasks<ForwardScratch<acc_t>>(static_cast<int64_t>(tasks.size()), flops, kForwardTiles, D, [&](int64_t index, ForwardScratch<acc_t>& w) {
    const Task& task = tasks[index];
    const int64_t start = p.seqs.start[task.seq], len = p.seqs.length[task.seq], h = task.head, q0 = task.q0;
    const int64_t nq = std::min(BQ, len - q0);
    const acc_t slope = static_cast<acc_t>(p.slope(task.seq, h)), margin = skip_margin<acc_t>(len);
    const bool* mask = p.mask ? p.mask + start : nullptr;
    const int64_t first_tile = keys.first[task.seq];
    int64_t ldq;
    const acc_t* q = stage(Q.row(start + q0, h), Q.token_stride, nq, D, w.q.data(), &ldq);
    for (int64_t r = 0; r < nq; ++r) {
      w.q_norm[r] = std::sqrt(dot<acc_t>(q + r * ldq, q + r * ldq, D));
      w.m[r] = -std::numeric_limits<acc_t>::infinity();
      w.l[r] = 0;
    }
    std::fill(w.o.begin(), w.o.begin() + nq * D, acc_t(0));
    // Key tiles from the diagonal outward: the near tiles fix the row max that lets far tiles be skipped.
    const int64_t blocks = (len + BK - 1) / BK, diag = std::min(q0 / BK, blocks - 1);
    for (int64_t step = 0; step < 2 * blocks; ++step) {
      const int64_t kb = step % 2 == 0 ? diag + step / 2 : diag - (step + 1) / 2;
      if (kb < 0 || kb >= blocks || !keys.live[first_tile + kb]) continue;
      const int64_t k0 = kb * BK, nk = std::min(BK, len - k0);
      if (tile_vanishes<acc_t>(q0, nq, k0, nk, w.q_norm.data(), keys.norm[(first_tile + kb) * H + h], scale, slope,
                               margin, w.m.data())) {
        continue;
      }
      int64_t ldk, ldv;
      const acc_t* k = stage(K.row(start + k0, h), K.token_stride, nk, D, w.k.data(), &ldk);
      const acc_t* v = stage(V.row(start + k0, h), V.token_stride, nk, D, w.v.data(), &ldv);
      acc_t* s = w.s.data();
      gemm<acc_t>(false, true, nq, nk, D, scale, q, ldq, k, ldk, acc_t(0), s, BK);
      const acc_t* mask_add = mask_row(mask ? mask + k0 : nullptr, nk, w.mask.data());
      for (int64_t r = 0; r < nq; ++r) {
        acc_t* srow = s + r * BK;
        const acc_t row_max = bias_row(srow, nk, q0 + r, k0, slope, mask_add);
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
  std::vector<acc_t> p, dp, dk, dv, q, dout, k, v, mask;
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
  run_tasks<BackwardScratch<acc_t>>(static_cast<int64_t>(tasks.size()), flops, kBackwardTiles, D, [&](int64_t index, BackwardScratch<acc_t>& w) {
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
      std::fill(w.dk.begin(), w.dk.begin() + nk * D, acc_t(0));
      std::fill(w.dv.begin(), w.dv.begin() + nk * D, acc_t(0));
      int64_t ldk, ldv;
      const acc_t* k = stage(K.row(start + k0, h), K.token_stride, nk, D, w.k.data(), &ldk);
      const acc_t* v = stage(V.row(start + k0, h), V.token_stride, nk, D, w.v.data(), &ldv);
      const acc_t* mask_add = mask_row(mask ? mask + k0 : nullptr, nk, w.mask.data());
      for (int64_t q0 = 0; q0 < len && keys.live[first_tile + kb]; q0 += BQ) {
        const int64_t nq = std::min(BQ, len - q0);
        if (tile_vanishes<acc_t>(q0, nq, k0, nk, w.q_norm.data() + q0, keys.norm[(first_tile + kb) * H + h], scale,
                                 slope, margin, w.lse.data() + q0)) {
          continue;
        }
        int64_t ldq, ldo;
        const acc_t* q = stage(Q.row(start + q0, h), Q.token_stride, nq, D, w.q.data(), &ldq);
        const acc_t* g = stage(dO.row(start + q0, h), dO.token_stride, nq, D, w.dout.data(), &ldo);
        acc_t* pt = w.p.data();
        acc_t* ds = w.dp.data();
        gemm<acc_t>(false, true, nq, nk, D, scale, q, ldq, k, ldk, acc_t(0), pt, BK);
        for (int64_t r = 0; r < nq; ++r) {
          acc_t* prow = pt + r * BK;
          const acc_t row_lse = w.lse[q0 + r];
          if (row_lse == -std::numeric_limits<acc_t>::infinity()) {  // no valid key: P = 0
            std::fill(prow, prow + nk, acc_t(0));
            continue;
          }
          bias_row(prow, nk, q0 + r, k0, slope, mask_add);
          exp_row(prow, nk, row_lse);
        }
        gemm<acc_t>(true, false, nk, D, nq, acc_t(1), pt, BK, g, ldo, acc_t(1), w.dv.data(), D);
        gemm<acc_t>(false, true, nq, nk, D, acc_t(1), g, ldo, v, ldv, acc_t(0), ds, BK);
        using Vec = Vectorized<acc_t>;
        for (int64_t r = 0; r < nq; ++r) {  // dS = P ∘ (dP − delta)
          acc_t* drow = ds + r * BK;
          const acc_t* prow = pt + r * BK;
          const Vec vdelta(w.delta[q0 + r]);
          int64_t j = 0;
          for (; j + Vec::size() <= nk; j += Vec::size()) {
            (Vec::loadu(prow + j) * (Vec::loadu(drow + j) - vdelta)).store(drow + j);
          }
          for (; j < nk; ++j) drow[j] = prow[j] * (drow[j] - w.delta[q0 + r]);
        }
        gemm<acc_t>(true, false, nk, D, nq, scale, ds, BK, q, ldq, acc_t(1), w.dk.data(), D);
        gemm<acc_t>(false, false, nq, D, nk, scale, ds, BK, k, ldk, acc_t(1), dq.row(start + q0, h),
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

// The last dim must be contiguous for the BLAS tiles; other strides are taken as they come.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

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
  const auto cu = cu_seqlens.contiguous();
  const int32_t* offsets = cu.const_data_ptr<int32_t>();
  check_cu_seqlens_values(offsets, cu.size(0), total, op);
  for (int64_t b = 0; b + 1 < cu.size(0); ++b) {
    p->seqs.start.push_back(offsets[b]);
    p->seqs.length.push_back(offsets[b + 1] - offsets[b]);
    lse_base->push_back(offsets[b]);
  }
}

// Padded tensors (B, L, H, D) are addressed as tokens b·L + i: that needs the batch stride to equal L × the
// token stride, true for contiguous tensors and for views that only split heads/projections.
at::Tensor flat_tokens(const at::Tensor& t) {
  const auto r = rows_contiguous(t);
  return r.stride(0) == r.size(1) * r.stride(1) ? r : r.contiguous();
}

std::tuple<at::Tensor, at::Tensor> fwd_impl(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                            Problem& p, const std::vector<int64_t>& lse_base, at::IntArrayRef lse_shape,
                                            int64_t lse_head_stride, bool padded) {
  const auto q = padded ? flat_tokens(q_in) : rows_contiguous(q_in);
  const auto k = padded ? flat_tokens(k_in) : rows_contiguous(k_in);
  const auto v = padded ? flat_tokens(v_in) : rows_contiguous(v_in);
  auto out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  auto lse = at::empty(lse_shape, q.options().dtype(alibi_lse_dtype(q.scalar_type())));
  if (q.numel() == 0) {
    lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "bembed_alibi_attention_fwd_cpu", [&] {
    forward<scalar_t>(p, operand<scalar_t>(q), operand<scalar_t>(k), operand<scalar_t>(v), operand<scalar_t>(out),
                      lse.mutable_data_ptr<acc_type<scalar_t>>(), lse_base, lse_head_stride);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_impl(const at::Tensor& grad_out, const at::Tensor& q_in,
                                                        const at::Tensor& k_in, const at::Tensor& v_in,
                                                        const at::Tensor& out_in, const at::Tensor& lse_in,
                                                        Problem& p, const std::vector<int64_t>& lse_base,
                                                        int64_t lse_head_stride, bool padded) {
  auto prep = [&](const at::Tensor& t) { return padded ? flat_tokens(t) : rows_contiguous(t); };
  const auto q = prep(q_in), k = prep(k_in), v = prep(v_in), out = prep(out_in), g = prep(grad_out);
  const auto lse = lse_in.contiguous();
  const auto options = q.options().memory_format(at::MemoryFormat::Contiguous);
  auto dq = at::zeros(q.sizes(), options);
  auto dk = at::empty(q.sizes(), options);
  auto dv = at::empty(q.sizes(), options);
  if (q.numel() == 0) return {dq, dk, dv};
  const int64_t total = padded ? q.size(0) * q.size(1) : q.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "bembed_alibi_attention_bwd_cpu", [&] {
    backward<scalar_t>(p, operand<scalar_t>(g), operand<scalar_t>(q), operand<scalar_t>(k), operand<scalar_t>(v),
                       operand<scalar_t>(out), lse.const_data_ptr<acc_type<scalar_t>>(), lse_base, lse_head_stride,
                       operand<scalar_t>(dq), operand<scalar_t>(dk), operand<scalar_t>(dv), total);
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
