// Which tiles an ALiBi attention CTA must visit: far keys vanish, and the kernels leave out the tiles that
// provably cannot matter, as the CPU kernel does (csrc/cpu/alibi_attention.cpp). In base 2 a score is
//   x_ij = scale·log2e·q_i·k_j − slope·log2e·|i − j|  ≤  bound_i − slope·log2e·|i − j|,
//   bound_i = |scale·log2e|·‖q_i‖·K,  K = the largest ‖k_j‖ of the (sequence, head)'s real keys.
// Against a value ref_i the row's softmax reaches (forward: its score of one real key, the diagonal when key i
// is real, else the nearer end of the sequence's real keys; backward: its lse), a key with
// |i − j| > reach_i = (bound_i − ref_i + margin) / (slope·log2e) weighs < 2^−margin of the
// row's sum. margin = log2(len) + 33 keeps all such keys of a row together < 2^−32 of it (a bit to spare for
// the rounding of the bias): invisible in fp32 accumulators, let alone fp16/bf16 outputs. The bound falls with
// distance both ways, so the tiles a CTA's rows reach are one contiguous range and the cp.async pipeline
// walks it unchanged. Non-finite inputs (K = inf) and slopes ≤ 0 reach every key; a backward row with no valid
// key (lse = −inf) reaches none. No CTA walks past the first or the last real key of its sequence, so the
// fully masked tail of a padded sequence costs nothing.
//
// K and the span of real keys come from alibi_key_norm_kernel. The backward's dK/dV CTAs own keys: the delta
// kernel records R_u, the largest reach_i over each run u of kReachRows query rows, and a CTA visits the query
// tiles between the first and the last run that come within R_u of its keys. Per run rather than per (sequence, head), one outlier row
// (a large ‖q_i‖) widens the range of the keys near it only.
#pragma once

#include <cmath>
#include <cstdint>

#include "alibi_attention_tiles.cuh"

namespace bembed::cuda::alibi {

// Relative slack on scores for the rounding of fp32 sums of D ≤ 256 products, ‖·‖ and the tensor cores'
// accumulation order (≈ (D + 4)·2^−23 ≤ 2^−14 needed).
constexpr float kBoundSlack = 1.0f / 4096.0f;

// Query rows per reach record (the dK/dV CTAs' finest query tile is 16 rows).
constexpr int kReachRows = 16;

struct TileRange {
  int first, last;  // inclusive; first > last: no tile
};

// The skip workspace (alibi_attention_workspace_floats floats) holds K of (sequence b, head h) at [b·H + h], the
// span of sequence b's real keys at [B·H + 2b] (last + 1) and [B·H + 2b + 1] (len − first), ints in float
// slots (0: no real key), the largest reach of any row of (b, h) at [B·(H + 2) + b·H + h], then per head the
// reach records; the launchers zero it first. Sequence b's records start at start_b / kReachRows + b:
// its ⌈len_b / kReachRows⌉ records end before the next sequence's begin, whatever start_b mod kReachRows is, and
// every index stays below T / kReachRows + B + 1.
__host__ __device__ inline int64_t reach_records_per_head(const AlibiAttentionParams& p) {
  return p.total_tokens / kReachRows + p.batch + 1;
}

__host__ __device__ inline int64_t skip_workspace_floats(const AlibiAttentionParams& p) {
  return 2 * int64_t(p.batch) * p.heads + 2 * int64_t(p.batch) + int64_t(p.heads) * reach_records_per_head(p);
}

struct KeySpan {
  int first, last;  // the first and the last real key; first > last: none
};

// Where sequence b's span of real keys is kept (two ints in float slots).
__device__ __forceinline__ int64_t span_slot(const AlibiAttentionParams& p, int b) {
  return int64_t(p.batch) * p.heads + 2 * int64_t(b);
}

__device__ __forceinline__ KeySpan real_keys(const AlibiAttentionParams& p, const float* workspace, int b, int len) {
  const float* span = workspace + span_slot(p, b);
  return {len - __float_as_int(span[1]), __float_as_int(span[0]) - 1};
}

// The reach record of query row i of sequence b (starting at seq_start), head h.
__device__ __forceinline__ int64_t reach_record(const AlibiAttentionParams& p, int64_t seq_start, int b, int h, int i) {
  return int64_t(p.batch) * (2 * p.heads + 2) + h * reach_records_per_head(p) + seq_start / kReachRows + b +
         i / kReachRows;
}

// Where the largest reach of any row of (sequence b, head h) is kept: it bounds the records a dK/dV CTA reads.
__device__ __forceinline__ int64_t largest_reach_slot(const AlibiAttentionParams& p, int b, int h) {
  return int64_t(p.batch) * (p.heads + 2) + int64_t(b) * p.heads + h;
}

__device__ __forceinline__ bool skips(const AlibiAttentionParams& p, float slope2) {
  return p.alibi_slopes != nullptr && slope2 > 0.0f;
}

// Non-negative floats order as their bit patterns: atomicMax on the int view is a float max.
__device__ __forceinline__ void atomic_max_nonnegative(float* at, float value) {
  atomicMax(reinterpret_cast<int*>(at), __float_as_int(value));
}

__device__ __forceinline__ float skip_margin(int len) { return log2f(float(len > 1 ? len : 1)) + 33.0f; }

// bound_i = |scale·log2e|·‖q_i‖·K.
__device__ __forceinline__ float score_bound(float q_norm, float key_norm, float scale_log2) {
  return fabsf(scale_log2) * q_norm * key_norm;
}

// reach_i for a row: +inf when anything is not finite or there is no reference (ref2 = −inf); −inf when the row
// has no valid key (ref2 = +inf, the backward's lse of such a row).
__device__ __forceinline__ float row_reach(float bound, float ref2, float slope2, int len) {
  const float reach = (bound * (1.0f + kBoundSlack) - ref2 + skip_margin(len)) / slope2;
  return reach < 1e30f ? reach : (reach == -INFINITY ? -INFINITY : INFINITY);  // NaN: everything
}

// One warp per key: K = max ‖k_j‖ over the real keys of each (sequence, head), and the span of each sequence's
// real keys. Grid as the delta kernel's.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) alibi_key_norm_kernel(AlibiAttentionParams p, const T* k,
                                                                  float* workspace) {
  const int h = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence(p, b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t ts = int64_t(p.heads) * D;
  const int64_t head_base = seq.start * ts + int64_t(h) * D;
  float largest = 0.0f;
  int first = seq.len, last = -1;  // of the real keys this warp saw
  for (int j = blockIdx.x * kWarps + warp; j < seq.len; j += gridDim.x * kWarps) {
    float sum = 0.0f;
    for (int d = lane; d < D; d += 32) {
      const float x = to_float(k[head_base + j * ts + d]);
      sum += x * x;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const float norm = sqrtf(sum);
    if (key_bias(p, b, j, seq.len) == 0.0f) {
      largest = fmaxf(largest, norm != norm ? INFINITY : norm);
      first = first < j ? first : j;
      last = j;
    }
  }
  if (lane == 0 && largest > 0.0f) atomic_max_nonnegative(workspace + int64_t(b) * p.heads + h, largest);
  if (lane == 0 && h == 0 && last >= 0) {  // the mask is per sequence: one head records the span
    int* span = reinterpret_cast<int*>(workspace + span_slot(p, b));
    atomicMax(span, last + 1);
    atomicMax(span + 1, seq.len - first);
  }
}

// Zeroes the workspace and, with slopes, fills in K and the spans. Both launchers start with it.
template <typename T, int D>
inline cudaError_t key_norms(const AlibiAttentionParams& p, const void* k, float* workspace, cudaStream_t stream) {
  cudaError_t status =
      cudaMemsetAsync(workspace, 0, sizeof(float) * alibi_attention_workspace_floats(p), stream);
  if (status != cudaSuccess || p.alibi_slopes == nullptr) return status;
  alibi_key_norm_kernel<T, D><<<grid_for(p, kBlockM), kThreads, 0, stream>>>(p, static_cast<const T*>(k), workspace);
  return cudaGetLastError();
}

// Σ_d q_i[d]² and Σ_d q_i[d]·k_i[d] (k_row null: 0) of row i, by the two threads 2r, 2r+1 of the row (each
// half of D; both get the sums).
template <typename T, int D>
__device__ __forceinline__ void row_sums(const uint16_t* q_row, const uint16_t* k_row, bool inside, float& qq,
                                         float& qk) {
  qq = 0.0f;
  qk = 0.0f;
  if (inside) {
    const T* qr = reinterpret_cast<const T*>(q_row);
    const T* kr = reinterpret_cast<const T*>(k_row);
    for (int d = (threadIdx.x % 2) * (D / 2); d < (threadIdx.x % 2 + 1) * (D / 2); ++d) {
      const float x = to_float(qr[d]);
      qq += x * x;
      if (kr != nullptr) qk += x * to_float(kr[d]);
    }
  }
  qq += __shfl_xor_sync(0xffffffffu, qq, 1);
  qk += __shfl_xor_sync(0xffffffffu, qk, 1);
}

// The kTile-wide tiles (of n_tiles) holding a position in [lo, hi] (lo > hi: none).
template <int kTile>
__device__ __forceinline__ TileRange tiles_between(double lo, double hi, int n_tiles) {
  if (!(lo <= hi) || hi < 0.0 || lo >= double(n_tiles) * kTile) return {1, 0};
  return {lo <= 0.0 ? 0 : int(lo / kTile), hi >= double(n_tiles) * kTile ? n_tiles - 1 : int(hi / kTile)};
}

// tiles_between for the union of every thread's [lo, hi]; uniform over the CTA. `scratch`: 2·kWarps doubles of
// shared memory, free again on return. Doubles: positions up to 2^31 stay exact.
template <int kTile>
__device__ __forceinline__ TileRange tiles_within(double lo, double hi, int n_tiles, double* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = fmin(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmax(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (lane == 0) {
    scratch[warp] = lo;
    scratch[kWarps + warp] = hi;
  }
  __syncthreads();
  for (int w = 0; w < kWarps; ++w) {
    lo = fmin(lo, scratch[w]);
    hi = fmax(hi, scratch[kWarps + w]);
  }
  __syncthreads();  // scratch is free again
  return tiles_between<kTile>(lo, hi, n_tiles);
}

// The key tiles (of kBlockN) that the query rows [row0, row0 + kBlockM) reach, within the span of real keys.
// ref2_of(i, j, x_ij, bound_i): row i's reference in base 2, given a real key j (−1 when k is null) and its score
// x_ij = scale·log2e·q_i·k_j without the bias (0 when k is null), and bound_i (the scale of the rounding of a
// score the caller computes itself).
template <typename T, int D, typename Reference>
__device__ __forceinline__ TileRange key_tiles_reached(const AlibiAttentionParams& p, const Sequence& seq, int b, int h,
                                                       int row0, const uint16_t* q, const uint16_t* k,
                                                       const float* workspace, int n_tiles, double* scratch,
                                                       Reference ref2_of) {
  const float slope2 = slope_log2(p, b, h);
  if (!skips(p, slope2)) return {0, n_tiles - 1};
  const KeySpan span = real_keys(p, workspace, b, seq.len);
  if (span.first > span.last) return {1, 0};  // every row without a real key: out 0, lse −inf, dQ 0
  const int64_t ts = int64_t(p.heads) * D;
  const int64_t head_base = seq.start * ts + int64_t(h) * D;
  const int i = row0 + threadIdx.x / 2;
  const bool inside = i < seq.len;
  int j = -1;  // a real key of row i, the nearest of those the span tells
  if (k != nullptr && inside) {
    j = key_bias(p, b, i, seq.len) == 0.0f ? i
        : i > span.last                   ? span.last
        : i < span.first                  ? span.first
        : i - span.first < span.last - i  ? span.first
                                          : span.last;
  }
  float qq, qk;
  row_sums<T, D>(q + head_base + int64_t(inside ? i : 0) * ts, j < 0 ? nullptr : k + head_base + int64_t(j) * ts,
                 inside, qq, qk);
  double lo = INFINITY, hi = -INFINITY;
  if (inside) {
    const float scale_log2 = p.softmax_scale * kLog2e;
    const float bound = score_bound(sqrtf(qq), workspace[int64_t(b) * p.heads + h], scale_log2);
    const float reach = row_reach(bound, ref2_of(i, j, qk * scale_log2, bound), slope2, seq.len);
    if (reach >= 0.0f) {
      lo = fmax(double(i) - double(reach), double(span.first));
      hi = fmin(double(i) + double(reach), double(span.last));
    }
  }
  return tiles_within<kBlockN>(lo, hi, n_tiles, scratch);
}

// The query tiles (of kTile) holding rows that may reach the keys [col0, col0 + kBlockN): from the first to the
// last run of kReachRows rows that comes within its record R_u of them. Uniform over the CTA; `scratch` as in
// tiles_within.
template <int kTile>
__device__ __forceinline__ TileRange query_tiles_reaching(const AlibiAttentionParams& p, const Sequence& seq, int b,
                                                          int h, int col0, const float* workspace, int n_tiles,
                                                          double* scratch) {
  if (!skips(p, slope_log2(p, b, h))) return {0, n_tiles - 1};
  const float* records = workspace + reach_record(p, seq.start, b, h, 0);
  const KeySpan span = real_keys(p, workspace, b, seq.len);  // this CTA's keys in the span: [col0, col1]
  const int col1 = col0 + kBlockN - 1 < span.last ? col0 + kBlockN - 1 : span.last;
  col0 = col0 > span.first ? col0 : span.first;
  if (col0 > col1) return {1, 0};  // no real key: dK = dV = 0
  // Only the runs within the sequence's largest reach of these keys can reach them: the scan costs O(reach),
  // not O(len), per CTA.
  const double largest = workspace[largest_reach_slot(p, b, h)];
  const int n_runs = (seq.len + kReachRows - 1) / kReachRows;
  const double from = double(col0) - largest, to = double(col1) + largest;
  const int first_run = from <= 0.0 ? 0 : int(from / kReachRows);
  const int last_run = to >= double(seq.len - 1) ? n_runs - 1 : int(to / kReachRows);
  double lo = INFINITY, hi = -INFINITY;
  for (int u = first_run + threadIdx.x; u <= last_run; u += kThreads) {
    const int first = u * kReachRows, last = (first + kReachRows < seq.len ? first + kReachRows : seq.len) - 1;
    const int gap = first > col1 ? first - col1 : (col0 > last ? col0 - last : 0);
    if (double(gap) <= double(records[u])) {
      lo = fmin(lo, double(first));
      hi = fmax(hi, double(last));
    }
  }
  return tiles_within<kTile>(lo, hi, n_tiles, scratch);
}

}  // namespace bembed::cuda::alibi
