// Building blocks of the CPU ALiBi attention kernels (csrc/cpu/alibi_attention.cpp): BLAS tile products,
// strided row access, the on-the-fly bias + online-softmax row passes, the negligible-tile test, and a
// dynamic task loop over at::parallel_for.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace bembed::alibi_cpu {

using at::vec::Vectorized;

// An uninitialised scratch array: every use writes before it reads, so no time goes into zeroing it.
template <typename T>
struct Buffer {
  explicit Buffer(int64_t n) : ptr(new T[n]) {}
  T* data() const { return ptr.get(); }
  T& operator[](int64_t i) const { return ptr[i]; }
  std::unique_ptr<T[]> ptr;
};

// Query × key tile sizes.
struct Tiles {
  int64_t q, k;
};

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
// Layout: one (sequence, head) is a run of rows with a fixed stride; the kernels see it through Operand.
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
        if (mask && !mask[j]) continue;  // a padded key gets no weight (its row may be inf/NaN: see bias_row)
        tiles.live[t] = 1;
        for (int64_t h = 0; h < heads; ++h) {
          const scalar_t* row = k.row(j, h);
          tiles.norm[t * heads + h] = std::max(tiles.norm[t * heads + h], std::sqrt(dot<acc_t>(row, row, d)));
        }
      }
    }
  });
  return tiles;
}

// The key padding mask of one tile as a row of 0 (kept) or −inf (masked); nullptr without a mask.
template <typename acc_t>
const acc_t* mask_row(const bool* mask, int64_t nk, acc_t* buffer) {
  if (!mask) return nullptr;
  for (int64_t j = 0; j < nk; ++j) buffer[j] = mask[j] ? acc_t(0) : -std::numeric_limits<acc_t>::infinity();
  return buffer;
}

// Scores are computed by different routines (the BLAS tiles, a dot product for the diagonal, norms for the
// bound), each rounding its sum of head_dim products its own way: they may differ by about
// head_dim·eps·|scale|·‖q‖·‖k‖, which at scores of 1e9 (inputs of 1e4) is more than exp() spans and more than
// any margin. Bounds and starting maxima allow for `rounding_slack` times that size.
template <typename acc_t>
double rounding_slack(int64_t head_dim) {
  return 4.0 * static_cast<double>(head_dim + 2) * std::numeric_limits<acc_t>::epsilon();
}

// The keys [lo, hi) of the key tile [k0, k0 + nk) whose weight can matter to query rows q0..q0+nq; lo == hi
// when none can. Key j is negligible for row i when |scale|·‖q_i‖·max‖k‖ − slope·|i−j| lies `margin` below
// the row's reference (running max or lse), i.e. when |i−j| > reach_i; the hull of the rows' windows
// [i − reach_i, i + reach_i] is kept (see the top of alibi_attention.cpp). The bound is raised by `rounding`
// (rounding_slack) of itself.
template <typename acc_t>
std::pair<int64_t, int64_t> live_keys(int64_t q0, int64_t nq, int64_t k0, int64_t nk, const acc_t* q_norm,
                                      acc_t k_norm, acc_t scale, acc_t slope, acc_t margin, const acc_t* row_ref,
                                      double rounding) {
  if (!(slope > 0)) return {k0, k0 + nk};
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t r = 0; r < nq; ++r) {
    const double bound = static_cast<double>(std::abs(scale) * q_norm[r] * k_norm), ref = row_ref[r];
    const double reach = (bound * (1 + rounding) - ref + margin) / static_cast<double>(slope);
    if (!(reach < 1e15)) return {k0, k0 + nk};  // no reference yet (−inf), or non-finite inputs
    if (reach < 0) continue;                    // every key is negligible for this row
    lo = std::min(lo, static_cast<double>(q0 + r) - reach);
    hi = std::max(hi, static_cast<double>(q0 + r) + reach);
  }
  if (!(lo <= hi)) return {k0, k0};
  const int64_t first = std::max<int64_t>(k0, static_cast<int64_t>(std::ceil(lo)));
  const int64_t last = std::min<int64_t>(k0 + nk, static_cast<int64_t>(std::floor(hi)) + 1);
  return last > first ? std::make_pair(first, last) : std::make_pair(k0, k0);
}

// s[j] ← s[j] − slope·|i − (k0 + j)|, or −inf where key_mask[j] is −inf, for one score row; returns its max.
// The mask replaces a score instead of being added to it: a padded key's row may hold inf or NaN (a buffer
// from torch.empty), and inf + −inf would put NaN into every real row of the tile.
template <typename acc_t>
acc_t bias_row(acc_t* s, int64_t nk, int64_t i, int64_t k0, acc_t slope, const acc_t* key_mask) {
  using V = Vectorized<acc_t>;
  constexpr int64_t W = V::size();
  const V vi(static_cast<acc_t>(i - k0)), vslope(-slope), step(static_cast<acc_t>(W));
  const V minus_inf(-std::numeric_limits<acc_t>::infinity());
  V pos = V::arange(acc_t(0), acc_t(1));
  V vmax = minus_inf;
  int64_t j = 0;
  for (; j + W <= nk; j += W, pos = pos + step) {
    V x = at::vec::fmadd((vi - pos).abs(), vslope, V::loadu(s + j));
    if (key_mask) x = V::blendv(x, minus_inf, V::loadu(key_mask + j) == minus_inf);
    x.store(s + j);
    vmax = at::vec::maximum(vmax, x);
  }
  alignas(64) acc_t lanes[W];
  vmax.store(lanes);
  acc_t row_max = *std::max_element(lanes, lanes + W);
  for (; j < nk; ++j) {
    acc_t x = s[j] - slope * static_cast<acc_t>(std::abs(i - k0 - j));
    if (key_mask) x = key_mask[j] == 0 ? x : key_mask[j];
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
  if (threads == 1) {
    Scratch scratch(tiles, head_dim);
    for (int64_t task = 0; task < count; ++task) work(task, scratch);
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      Scratch scratch(tiles, head_dim);
      for (int64_t task = next++; task < count; task = next++) work(task, scratch);
    }
  });
}

}  // namespace bembed::alibi_cpu
