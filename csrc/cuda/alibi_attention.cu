// ALiBi flash attention on CUDA (sm_80+ tensor cores, FlashAttention-2 tiling, no L×L tensor).
//
// Forward: a CTA owns kBlockM = 64 queries of one (sequence, head), 16 per warp, and walks the key tiles of
// kBlockN = 64 with an online softmax in base 2: logits x = s·scale·log2e − slope·log2e·|i−j| (−inf for
// masked keys), running max m and sum l; lse = (m + log2 l)·ln2 is saved per row.
// Backward (deterministic, no atomics): a pre-kernel writes delta_i = rowsum(dO∘O); the dK/dV kernel gives
// each CTA kBlockN keys (16 per warp) and loops over query tiles, computing everything key-major (Sᵀ = K·Qᵀ,
// dPᵀ = V·dOᵀ) so that dV += Pᵀ·dO and dK += dSᵀ·Q stay in registers; the dQ kernel mirrors the forward
// (queries per CTA, loop over keys) and accumulates dQ += dS·K. P is recomputed as exp2(x − lse·log2e).
// Tensor cores via mma.sync m16n8k16 with ldmatrix fragments (mma_fragments.cuh); the streamed tiles (K/V, or
// Q/dO for dK/dV) are double-buffered with cp.async (async_copy.cuh).
//
// Boundaries: tile rows past the sequence end are zero-filled in shared memory (so no garbage reaches a
// product) and never stored; keys past the end or masked get x = −inf; a row whose keys are all masked
// keeps m = −inf, uses 0 as its exponent base (no −inf − −inf), ends with l = 0 and writes zeros and
// lse = −inf; the backward maps lse = −inf to +inf so that its P is exactly 0.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "alibi_attention.cuh"
#include "async_copy.cuh"
#include "mma_fragments.cuh"

namespace bembed::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockM = 16 * kWarps;  // queries per CTA (forward, dQ)
constexpr int kBlockN = 64;           // keys per tile (forward, dQ) and per CTA (dK/dV)
constexpr int kPad = 8;               // 16-bit elements of padding per shared row: rows stay 16-byte aligned
                                      // and the 8 rows of each ldmatrix hit distinct banks
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kDefaultSharedLimit = 48 * 1024;

// Queries per step of the dK/dV kernel: fewer for D = 128 to keep dK, dV, Sᵀ and dPᵀ in registers.
template <int D>
constexpr int dkdv_block_m() {
  return D <= 64 ? 64 : 16;
}

struct Sequence {
  int64_t start;            // first token
  int len;
  int64_t lse_offset;       // lse/delta index of (h = 0, i = 0)
  int64_t lse_head_stride;
};

__device__ __forceinline__ Sequence sequence(const AlibiAttentionParams& p, int b) {
  Sequence s;
  if (p.cu_seqlens != nullptr) {
    s.start = p.cu_seqlens[b];
    s.len = p.cu_seqlens[b + 1] - p.cu_seqlens[b];
    s.lse_offset = s.start;                 // lse (H, T)
    s.lse_head_stride = p.total_tokens;
  } else {
    s.start = int64_t(b) * p.seqlen;
    s.len = p.seqlen;
    s.lse_offset = int64_t(b) * p.heads * p.seqlen;  // lse (B, H, L)
    s.lse_head_stride = p.seqlen;
  }
  return s;
}

__device__ __forceinline__ float slope_log2(const AlibiAttentionParams& p, int b, int h) {
  return p.alibi_slopes == nullptr ? 0.0f : p.alibi_slopes[b * p.slopes_batch_stride + h] * kLog2e;
}

// 0 for a real key of the sequence, −inf for a key past its end or masked out.
__device__ __forceinline__ float key_bias(const AlibiAttentionParams& p, int b, int j, int len) {
  const bool real = j < len && (p.key_padding_mask == nullptr || p.key_padding_mask[int64_t(b) * p.seqlen + j]);
  return real ? 0.0f : -INFINITY;
}

// lse in base 2 for the backward; rows with no valid key (lse = −inf) and rows past the end get +inf so that
// exp2(x − lse2) is 0 for every x, −inf included.
__device__ __forceinline__ float backward_lse2(const float* lse, const Sequence& seq, int h, int i) {
  if (i >= seq.len) return INFINITY;
  const float l = lse[seq.lse_offset + h * seq.lse_head_stride + i];
  return l == -INFINITY ? INFINITY : l * kLog2e;
}

// Starts copying rows [row0, row0 + kRows) of one head (x points at the head's first token; token stride ts)
// into a shared tile with leading dimension D + kPad, in 16-byte cp.async chunks; rows at or past len are
// zero-filled. The copies join the calling thread's open async_copy group.
template <int kRows, int D>
__device__ __forceinline__ void load_tile_async(uint16_t* tile, const uint16_t* x, int64_t ts, int row0, int len) {
  constexpr int kChunksPerRow = D / 8;
  for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += kThreads) {
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * 8;
    const bool inside = row0 + r < len;
    async_copy::copy16(tile + r * (D + kPad) + col, inside ? x + (row0 + r) * ts + col : x, inside);
  }
}

// The streamed operands (K and V over key tiles, or Q and dO over query tiles) go through a two-stage
// pipeline: stage s holds [x tile][y tile] of kRows rows each. load_pair_async starts one stage and commits
// its group; pipeline_step, at tile n, starts tile n+1 into the other stage, waits for tile n's copies and
// returns its stage. The caller then needs a __syncthreads() before reading (other threads' copies) and
// another after its last read of the stage (the stage is refilled at step n+1).
template <int kRows, int D>
__device__ __forceinline__ void load_pair_async(uint16_t* stage, const uint16_t* x, const uint16_t* y, int64_t ts,
                                                int row0, int len) {
  load_tile_async<kRows, D>(stage, x, ts, row0, len);
  load_tile_async<kRows, D>(stage + kRows * (D + kPad), y, ts, row0, len);
  async_copy::commit();
}

template <int kRows, int D>
__device__ __forceinline__ const uint16_t* pipeline_step(uint16_t* stages, int n, int n_tiles, const uint16_t* x,
                                                         const uint16_t* y, int64_t ts, int len) {
  constexpr int kStage = 2 * kRows * (D + kPad);
  if (n + 1 < n_tiles) {
    load_pair_async<kRows, D>(stages + ((n + 1) % 2) * kStage, x, y, ts, (n + 1) * kRows, len);
    async_copy::wait<1>();
  } else {
    async_copy::wait<0>();
  }
  return stages + (n % 2) * kStage;
}

// Stores a warp's 16-row fp32 accumulator (C fragments over D/8 column tiles), times `scale`, as rows
// row0 + g and row0 + g + 8 of one head; rows at or past len are skipped.
template <typename T, int D>
__device__ __forceinline__ void store_rows(uint16_t* x, int64_t ts, const float (&acc)[D / 8][4], int row0, int len,
                                           float scale_lo, float scale_hi, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int r_lo = row0 + g, r_hi = row0 + g + 8;
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int col = dt * 8 + 2 * t;
    if (r_lo < len) {
      *reinterpret_cast<uint32_t*>(x + r_lo * ts + col) = mma::Ops<T>::pack(acc[dt][0] * scale_lo, acc[dt][1] * scale_lo);
    }
    if (r_hi < len) {
      *reinterpret_cast<uint32_t*>(x + r_hi * ts + col) = mma::Ops<T>::pack(acc[dt][2] * scale_hi, acc[dt][3] * scale_hi);
    }
  }
}

// acc[n-tile] += A(16 × D, rows r0.. of tile_a) · tile_bᵀ(D × 8·kTiles): e.g. S = Q·Kᵀ for one warp.
template <typename T, int D, int kTiles>
__device__ __forceinline__ void gemm_abt(float (&acc)[kTiles][4], const uint16_t* tile_a, int r0,
                                         const uint16_t* tile_b, int lane) {
  constexpr int kLd = D + kPad;
  static_assert(kTiles % 2 == 0, "B fragments are loaded two n-tiles at a time");
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    mma::load_a(a, tile_a, kLd, r0, kk * 16, lane);
#pragma unroll
    for (int nt = 0; nt < kTiles; nt += 2) {
      uint32_t b[2][2];
      mma::load_b_transposed_x2(b, tile_b, kLd, nt * 8, kk * 16, lane);
      mma::Ops<T>::mma(acc[nt], a, b[0]);
      mma::Ops<T>::mma(acc[nt + 1], a, b[1]);
    }
  }
}

// acc(16 × D) += P(16 × 8·kTiles, held as C fragments) · tile_b(8·kTiles × D): e.g. O += P·V for one warp.
template <typename T, int D, int kTiles>
__device__ __forceinline__ void gemm_pb(float (&acc)[D / 8][4], const float (&p)[kTiles][4], const uint16_t* tile_b,
                                        int lane) {
  constexpr int kLd = D + kPad;
#pragma unroll
  for (int kk = 0; kk < kTiles / 2; ++kk) {
    uint32_t a[4];
    mma::accumulator_to_a<T>(a, p, kk);
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      uint32_t b[2][2];
      mma::load_b_x2(b, tile_b, kLd, kk * 16, dt * 8, lane);
      mma::Ops<T>::mma(acc[dt], a, b[0]);
      mma::Ops<T>::mma(acc[dt + 1], a, b[1]);
    }
  }
}

template <int kRows, int kCols>
__device__ __forceinline__ void zero(float (&x)[kRows][kCols]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) x[r][c] = 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------

template <int D>
constexpr int forward_smem_bytes() {
  return (kBlockM + 4 * kBlockN) * (D + kPad) * 2 + kBlockN * 4;
}

// One query tile [row0, row0 + kBlockM) of sequence b, head h.
template <typename T, int D>
__device__ __forceinline__ void forward_tile(const AlibiAttentionParams& p, const Sequence& seq, int b, int h,
                                             int row0, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                             uint16_t* out, float* lse, unsigned char* smem) {
  constexpr int kLd = D + kPad;
  constexpr int kTilesN = kBlockN / 8;
  uint16_t* s_q = reinterpret_cast<uint16_t*>(smem);
  uint16_t* s_kv = s_q + kBlockM * kLd;  // two pipeline stages of [K tile][V tile]
  float* s_key_bias = reinterpret_cast<float*>(s_kv + 4 * kBlockN * kLd);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  const int64_t ts = int64_t(p.heads) * D;
  const int64_t head_base = seq.start * ts + int64_t(h) * D;
  const float scale_log2 = p.softmax_scale * kLog2e;
  const float slope = slope_log2(p, b, h);
  const int i_lo = row0 + warp * 16 + g;  // this thread's two query rows
  const int i_hi = i_lo + 8;

  load_tile_async<kBlockM, D>(s_q, q + head_base, ts, row0, seq.len);  // committed with the first K/V tile
  load_pair_async<kBlockN, D>(s_kv, k + head_base, v + head_base, ts, 0, seq.len);
  const int n_tiles = (seq.len + kBlockN - 1) / kBlockN;

  float o[D / 8][4];
  zero(o);
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running max of x (base-2 logits)
  float l_lo = 0.0f, l_hi = 0.0f;            // this lane's part of the running sum (group-reduced at the end)

  for (int n = 0; n < n_tiles; ++n) {
    const int col0 = n * kBlockN;
    const uint16_t* s_k = pipeline_step<kBlockN, D>(s_kv, n, n_tiles, k + head_base, v + head_base, ts, seq.len);
    const uint16_t* s_v = s_k + kBlockN * kLd;
    if (threadIdx.x < kBlockN) s_key_bias[threadIdx.x] = key_bias(p, b, col0 + threadIdx.x, seq.len);
    __syncthreads();  // tile n (and Q) are in shared memory

    float s[kTilesN][4];
    zero(s);
    gemm_abt<T, D, kTilesN>(s, s_q, warp * 16, s_k, lane);

    float max_lo = m_lo, max_hi = m_hi;
#pragma unroll
    for (int nt = 0; nt < kTilesN; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = nt * 8 + 2 * t + e;
        const int j = col0 + c;
        s[nt][e] = s[nt][e] * scale_log2 - slope * fabsf(float(i_lo - j)) + s_key_bias[c];
        s[nt][2 + e] = s[nt][2 + e] * scale_log2 - slope * fabsf(float(i_hi - j)) + s_key_bias[c];
        max_lo = fmaxf(max_lo, s[nt][e]);
        max_hi = fmaxf(max_hi, s[nt][2 + e]);
      }
    }
    max_lo = mma::group_max(max_lo);
    max_hi = mma::group_max(max_hi);
    const float base_lo = max_lo == -INFINITY ? 0.0f : max_lo;
    const float base_hi = max_hi == -INFINITY ? 0.0f : max_hi;
    const float alpha_lo = exp2f(m_lo - base_lo);  // 0 while m is −inf
    const float alpha_hi = exp2f(m_hi - base_hi);
    m_lo = max_lo;
    m_hi = max_hi;
    l_lo *= alpha_lo;
    l_hi *= alpha_hi;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= alpha_lo;
      o[dt][1] *= alpha_lo;
      o[dt][2] *= alpha_hi;
      o[dt][3] *= alpha_hi;
    }
#pragma unroll
    for (int nt = 0; nt < kTilesN; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = exp2f(s[nt][e] - base_lo);
        s[nt][2 + e] = exp2f(s[nt][2 + e] - base_hi);
        l_lo += s[nt][e];
        l_hi += s[nt][2 + e];
      }
    }
    gemm_pb<T, D, kTilesN>(o, s, s_v, lane);
    __syncthreads();  // stage n % 2 and the key bias are free again
  }

  l_lo = mma::group_sum(l_lo);
  l_hi = mma::group_sum(l_hi);
  const float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f;
  const float inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
  store_rows<T, D>(out + head_base, ts, o, row0 + warp * 16, seq.len, inv_lo, inv_hi, lane);
  if (t == 0) {
    float* lse_head = lse + seq.lse_offset + h * seq.lse_head_stride;
    if (i_lo < seq.len) lse_head[i_lo] = l_lo > 0.0f ? (m_lo + log2f(l_lo)) * kLn2 : -INFINITY;
    if (i_hi < seq.len) lse_head[i_hi] = l_hi > 0.0f ? (m_hi + log2f(l_hi)) * kLn2 : -INFINITY;
  }
}

// Grid (query tiles, heads, sequences). The grid-stride loop over tiles keeps the result right even when
// max_seqlen underestimates a sequence; its bound is uniform over the CTA, so the barriers inside are safe.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) alibi_forward_kernel(AlibiAttentionParams p, const uint16_t* q,
                                                                 const uint16_t* k, const uint16_t* v,
                                                                 uint16_t* out, float* lse) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Sequence seq = sequence(p, blockIdx.z);
  for (int tile = blockIdx.x; tile * kBlockM < seq.len; tile += gridDim.x) {
    __syncthreads();  // the previous tile's shared memory is no longer read
    forward_tile<T, D>(p, seq, blockIdx.z, blockIdx.y, tile * kBlockM, q, k, v, out, lse, smem);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------

// delta_i = Σ_d dO[i, d]·O[i, d] in fp32, one warp per row, rows dealt round-robin to the warps of the
// grid; delta has lse's layout.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) alibi_backward_delta_kernel(AlibiAttentionParams p, const T* dout,
                                                                        const T* out, float* delta) {
  const int h = blockIdx.y;
  const Sequence seq = sequence(p, blockIdx.z);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t ts = int64_t(p.heads) * D;
  const int64_t head_base = seq.start * ts + int64_t(h) * D;
  for (int i = blockIdx.x * kWarps + warp; i < seq.len; i += gridDim.x * kWarps) {
    float sum = 0.0f;
    for (int d = lane; d < D; d += 32) sum += to_float(dout[head_base + i * ts + d]) * to_float(out[head_base + i * ts + d]);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) delta[seq.lse_offset + h * seq.lse_head_stride + i] = sum;
  }
}

template <int D>
constexpr int dq_smem_bytes() {
  return (2 * kBlockM + 4 * kBlockN) * (D + kPad) * 2 + kBlockN * 4;
}

// dQ for kBlockM queries: loop over key tiles; dS = P∘(dP − delta) with dP = dO·Vᵀ; dQ = scale·Σ dS·K.
template <typename T, int D>
__device__ __forceinline__ void dq_tile(const AlibiAttentionParams& p, const Sequence& seq, int b, int h, int row0,
                                        const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                        const uint16_t* dout, const float* lse, const float* delta, uint16_t* dq,
                                        unsigned char* smem) {
  constexpr int kLd = D + kPad;
  constexpr int kTilesN = kBlockN / 8;
  uint16_t* s_q = reinterpret_cast<uint16_t*>(smem);
  uint16_t* s_do = s_q + kBlockM * kLd;
  uint16_t* s_kv = s_do + kBlockM * kLd;  // two pipeline stages of [K tile][V tile]
  float* s_key_bias = reinterpret_cast<float*>(s_kv + 4 * kBlockN * kLd);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  const int64_t ts = int64_t(p.heads) * D;
  const int64_t head_base = seq.start * ts + int64_t(h) * D;
  const float scale_log2 = p.softmax_scale * kLog2e;
  const float slope = slope_log2(p, b, h);
  const int i_lo = row0 + warp * 16 + g;
  const int i_hi = i_lo + 8;
  const float lse2_lo = backward_lse2(lse, seq, h, i_lo);
  const float lse2_hi = backward_lse2(lse, seq, h, i_hi);
  const int64_t row_lo = seq.lse_offset + h * seq.lse_head_stride + i_lo;
  const float delta_lo = i_lo < seq.len ? delta[row_lo] : 0.0f;
  const float delta_hi = i_hi < seq.len ? delta[row_lo + 8] : 0.0f;

  load_tile_async<kBlockM, D>(s_q, q + head_base, ts, row0, seq.len);  // committed with the first K/V tile
  load_tile_async<kBlockM, D>(s_do, dout + head_base, ts, row0, seq.len);
  load_pair_async<kBlockN, D>(s_kv, k + head_base, v + head_base, ts, 0, seq.len);
  const int n_tiles = (seq.len + kBlockN - 1) / kBlockN;

  float acc[D / 8][4];
  zero(acc);
  for (int n = 0; n < n_tiles; ++n) {
    const int col0 = n * kBlockN;
    const uint16_t* s_k = pipeline_step<kBlockN, D>(s_kv, n, n_tiles, k + head_base, v + head_base, ts, seq.len);
    const uint16_t* s_v = s_k + kBlockN * kLd;
    if (threadIdx.x < kBlockN) s_key_bias[threadIdx.x] = key_bias(p, b, col0 + threadIdx.x, seq.len);
    __syncthreads();  // tile n (and Q, dO) are in shared memory

    float s[kTilesN][4], dp[kTilesN][4];
    zero(s);
    zero(dp);
    gemm_abt<T, D, kTilesN>(s, s_q, warp * 16, s_k, lane);
    gemm_abt<T, D, kTilesN>(dp, s_do, warp * 16, s_v, lane);
#pragma unroll
    for (int nt = 0; nt < kTilesN; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = nt * 8 + 2 * t + e;
        const int j = col0 + c;
        const float p_lo = exp2f(s[nt][e] * scale_log2 - slope * fabsf(float(i_lo - j)) + s_key_bias[c] - lse2_lo);
        const float p_hi =
            exp2f(s[nt][2 + e] * scale_log2 - slope * fabsf(float(i_hi - j)) + s_key_bias[c] - lse2_hi);
        s[nt][e] = p_lo * (dp[nt][e] - delta_lo);  // s now holds dS
        s[nt][2 + e] = p_hi * (dp[nt][2 + e] - delta_hi);
      }
    }
    gemm_pb<T, D, kTilesN>(acc, s, s_k, lane);
    __syncthreads();  // stage n % 2 and the key bias are free again
  }
  store_rows<T, D>(dq + head_base, ts, acc, row0 + warp * 16, seq.len, p.softmax_scale, p.softmax_scale, lane);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) alibi_backward_dq_kernel(AlibiAttentionParams p, const uint16_t* q,
                                                                     const uint16_t* k, const uint16_t* v,
                                                                     const uint16_t* dout, const float* lse,
                                                                     const float* delta, uint16_t* dq) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Sequence seq = sequence(p, blockIdx.z);
  for (int tile = blockIdx.x; tile * kBlockM < seq.len; tile += gridDim.x) {
    __syncthreads();
    dq_tile<T, D>(p, seq, blockIdx.z, blockIdx.y, tile * kBlockM, q, k, v, dout, lse, delta, dq, smem);
  }
}

template <int D>
constexpr int dkdv_smem_bytes() {
  return (2 * kBlockN + 4 * dkdv_block_m<D>()) * (D + kPad) * 2 + 2 * dkdv_block_m<D>() * 4;
}

// dK, dV for kBlockN keys (16 per warp, key-major): loop over query tiles of kBlockMB;
// dV += Pᵀ·dO, dK += scale·dSᵀ·Q with Pᵀ and dPᵀ = V·dOᵀ computed with keys as rows.
template <typename T, int D>
__device__ __forceinline__ void dkdv_tile(const AlibiAttentionParams& p, const Sequence& seq, int b, int h,
                                          int col0, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                          const uint16_t* dout, const float* lse, const float* delta, uint16_t* dk,
                                          uint16_t* dv, unsigned char* smem) {
  constexpr int kLd = D + kPad;
  constexpr int kBlockMB = dkdv_block_m<D>();
  constexpr int kTilesM = kBlockMB / 8;
  uint16_t* s_k = reinterpret_cast<uint16_t*>(smem);
  uint16_t* s_v = s_k + kBlockN * kLd;
  uint16_t* s_qdo = s_v + kBlockN * kLd;  // two pipeline stages of [Q tile][dO tile]
  float* s_lse2 = reinterpret_cast<float*>(s_qdo + 4 * kBlockMB * kLd);
  float* s_delta = s_lse2 + kBlockMB;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  const int64_t ts = int64_t(p.heads) * D;
  const int64_t head_base = seq.start * ts + int64_t(h) * D;
  const float scale_log2 = p.softmax_scale * kLog2e;
  const float slope = slope_log2(p, b, h);
  const int j_lo = col0 + warp * 16 + g;  // this thread's two key rows
  const int j_hi = j_lo + 8;
  const float kb_lo = key_bias(p, b, j_lo, seq.len);
  const float kb_hi = key_bias(p, b, j_hi, seq.len);

  load_tile_async<kBlockN, D>(s_k, k + head_base, ts, col0, seq.len);  // committed with the first Q/dO tile
  load_tile_async<kBlockN, D>(s_v, v + head_base, ts, col0, seq.len);
  load_pair_async<kBlockMB, D>(s_qdo, q + head_base, dout + head_base, ts, 0, seq.len);
  const int n_tiles = (seq.len + kBlockMB - 1) / kBlockMB;

  float acc_dk[D / 8][4], acc_dv[D / 8][4];
  zero(acc_dk);
  zero(acc_dv);
  for (int n = 0; n < n_tiles; ++n) {
    const int row0 = n * kBlockMB;
    const uint16_t* s_q = pipeline_step<kBlockMB, D>(s_qdo, n, n_tiles, q + head_base, dout + head_base, ts, seq.len);
    const uint16_t* s_do = s_q + kBlockMB * kLd;
    if (threadIdx.x < kBlockMB) {
      const int i = row0 + threadIdx.x;
      s_lse2[threadIdx.x] = backward_lse2(lse, seq, h, i);
      s_delta[threadIdx.x] = i < seq.len ? delta[seq.lse_offset + h * seq.lse_head_stride + i] : 0.0f;
    }
    __syncthreads();  // tile n (and K, V) are in shared memory

    float st[kTilesM][4], dpt[kTilesM][4];  // Sᵀ and dPᵀ: rows = this warp's keys, columns = queries
    zero(st);
    zero(dpt);
    gemm_abt<T, D, kTilesM>(st, s_k, warp * 16, s_q, lane);
    gemm_abt<T, D, kTilesM>(dpt, s_v, warp * 16, s_do, lane);
#pragma unroll
    for (int nt = 0; nt < kTilesM; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = nt * 8 + 2 * t + e;
        const int i = row0 + c;
        const float p_lo = exp2f(st[nt][e] * scale_log2 - slope * fabsf(float(i - j_lo)) + kb_lo - s_lse2[c]);
        const float p_hi = exp2f(st[nt][2 + e] * scale_log2 - slope * fabsf(float(i - j_hi)) + kb_hi - s_lse2[c]);
        st[nt][e] = p_lo;  // st now holds Pᵀ, dpt dSᵀ
        st[nt][2 + e] = p_hi;
        dpt[nt][e] = p_lo * (dpt[nt][e] - s_delta[c]);
        dpt[nt][2 + e] = p_hi * (dpt[nt][2 + e] - s_delta[c]);
      }
    }
    gemm_pb<T, D, kTilesM>(acc_dv, st, s_do, lane);
    gemm_pb<T, D, kTilesM>(acc_dk, dpt, s_q, lane);
    __syncthreads();  // stage n % 2, lse2 and delta are free again
  }
  store_rows<T, D>(dk + head_base, ts, acc_dk, col0 + warp * 16, seq.len, p.softmax_scale, p.softmax_scale, lane);
  store_rows<T, D>(dv + head_base, ts, acc_dv, col0 + warp * 16, seq.len, 1.0f, 1.0f, lane);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) alibi_backward_dkdv_kernel(AlibiAttentionParams p, const uint16_t* q,
                                                                       const uint16_t* k, const uint16_t* v,
                                                                       const uint16_t* dout, const float* lse,
                                                                       const float* delta, uint16_t* dk,
                                                                       uint16_t* dv) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Sequence seq = sequence(p, blockIdx.z);
  for (int tile = blockIdx.x; tile * kBlockN < seq.len; tile += gridDim.x) {
    __syncthreads();
    dkdv_tile<T, D>(p, seq, blockIdx.z, blockIdx.y, tile * kBlockN, q, k, v, dout, lse, delta, dk, dv, smem);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------------

template <typename Kernel>
cudaError_t allow_shared(Kernel kernel, int bytes) {
  if (bytes <= kDefaultSharedLimit) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

// At least one tile per (head, sequence): the kernels stride over the rest (max_seqlen is only a hint).
dim3 grid_for(const AlibiAttentionParams& p, int rows_per_cta) {
  return dim3(std::max(1, (p.max_seqlen + rows_per_cta - 1) / rows_per_cta), p.heads, p.batch);
}

bool empty_problem(const AlibiAttentionParams& p) { return p.batch == 0 || p.heads == 0 || p.total_tokens == 0; }

bool grid_fits(const AlibiAttentionParams& p) {
  return p.batch <= kAlibiMaxGridYZ && p.heads <= kAlibiMaxGridYZ && p.max_seqlen >= 0;
}

template <typename T, int D>
cudaError_t forward_typed(const AlibiAttentionParams& p, const void* q, const void* k, const void* v, void* out,
                          float* lse, cudaStream_t stream) {
  constexpr int kSmem = forward_smem_bytes<D>();
  const auto kernel = alibi_forward_kernel<T, D>;
  cudaError_t status = allow_shared(kernel, kSmem);
  if (status != cudaSuccess) return status;
  kernel<<<grid_for(p, kBlockM), kThreads, kSmem, stream>>>(p, static_cast<const uint16_t*>(q),
                                                            static_cast<const uint16_t*>(k),
                                                            static_cast<const uint16_t*>(v),
                                                            static_cast<uint16_t*>(out), lse);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t backward_typed(const AlibiAttentionParams& p, const void* dout, const void* q, const void* k,
                           const void* v, const void* out, const float* lse, float* delta, void* dq, void* dk,
                           void* dv, cudaStream_t stream) {
  const auto* q16 = static_cast<const uint16_t*>(q);
  const auto* k16 = static_cast<const uint16_t*>(k);
  const auto* v16 = static_cast<const uint16_t*>(v);
  const auto* do16 = static_cast<const uint16_t*>(dout);

  alibi_backward_delta_kernel<T, D><<<grid_for(p, kBlockM), kThreads, 0, stream>>>(
      p, static_cast<const T*>(dout), static_cast<const T*>(out), delta);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;

  constexpr int kSmemDq = dq_smem_bytes<D>();
  const auto dq_kernel = alibi_backward_dq_kernel<T, D>;
  if ((status = allow_shared(dq_kernel, kSmemDq)) != cudaSuccess) return status;
  dq_kernel<<<grid_for(p, kBlockM), kThreads, kSmemDq, stream>>>(p, q16, k16, v16, do16, lse, delta,
                                                                 static_cast<uint16_t*>(dq));
  if ((status = cudaGetLastError()) != cudaSuccess) return status;

  constexpr int kSmemDkdv = dkdv_smem_bytes<D>();
  const auto dkdv_kernel = alibi_backward_dkdv_kernel<T, D>;
  if ((status = allow_shared(dkdv_kernel, kSmemDkdv)) != cudaSuccess) return status;
  dkdv_kernel<<<grid_for(p, kBlockN), kThreads, kSmemDkdv, stream>>>(
      p, q16, k16, v16, do16, lse, delta, static_cast<uint16_t*>(dk), static_cast<uint16_t*>(dv));
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_for_dtype(const AlibiAttentionParams& p, const void* q, const void* k, const void* v, void* out,
                              float* lse, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return forward_typed<T, 32>(p, q, k, v, out, lse, stream);
    case 64: return forward_typed<T, 64>(p, q, k, v, out, lse, stream);
    case 128: return forward_typed<T, 128>(p, q, k, v, out, lse, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t backward_for_dtype(const AlibiAttentionParams& p, const void* dout, const void* q, const void* k,
                               const void* v, const void* out, const float* lse, float* delta, void* dq, void* dk,
                               void* dv, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return backward_typed<T, 32>(p, dout, q, k, v, out, lse, delta, dq, dk, dv, stream);
    case 64: return backward_typed<T, 64>(p, dout, q, k, v, out, lse, delta, dq, dk, dv, stream);
    case 128: return backward_typed<T, 128>(p, dout, q, k, v, out, lse, delta, dq, dk, dv, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool alibi_attention_supports_head_dim(int head_dim) { return head_dim == 32 || head_dim == 64 || head_dim == 128; }

cudaError_t alibi_attention_forward(const AlibiAttentionParams& params, DType dtype, const void* q, const void* k,
                                    const void* v, void* out, float* lse, cudaStream_t stream) {
  if (!grid_fits(params)) return cudaErrorInvalidValue;
  if (empty_problem(params)) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat16: return forward_for_dtype<__half>(params, q, k, v, out, lse, stream);
    case DType::kBFloat16: return forward_for_dtype<__nv_bfloat16>(params, q, k, v, out, lse, stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

cudaError_t alibi_attention_backward(const AlibiAttentionParams& params, DType dtype, const void* grad_out,
                                     const void* q, const void* k, const void* v, const void* out,
                                     const float* lse, float* delta, void* grad_q, void* grad_k, void* grad_v,
                                     cudaStream_t stream) {
  if (!grid_fits(params)) return cudaErrorInvalidValue;
  if (empty_problem(params)) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat16:
      return backward_for_dtype<__half>(params, grad_out, q, k, v, out, lse, delta, grad_q, grad_k, grad_v, stream);
    case DType::kBFloat16:
      return backward_for_dtype<__nv_bfloat16>(params, grad_out, q, k, v, out, lse, delta, grad_q, grad_k, grad_v,
                                               stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace bembed::cuda
