// ALiBi flash attention on CUDA (sm_80+ tensor cores, FlashAttention-2 tiling, no L×L tensor): what the forward
// (alibi_attention_fwd.cu) and backward (alibi_attention_bwd.cu) kernels share: tile sizes, sequence addressing,
// the bias, the cp.async pipeline of streamed tiles, the warp-level tensor-core products and the launch helpers.
//
// Tensor cores via mma.sync m16n8k16 with ldmatrix fragments (mma_fragments.cuh); the streamed tiles (K/V, or
// Q/dO for dK/dV) are double-buffered with cp.async (async_copy.cuh).
//
// Boundaries: tile rows past the sequence end are zero-filled in shared memory (so no garbage reaches a
// product) and never stored; keys past the end or masked get x = −inf; a row whose keys are all masked
// keeps m = −inf, uses 0 as its exponent base (no −inf − −inf), ends with l = 0 and writes zeros and
// lse = −inf; the backward maps lse = −inf to +inf so that its P is exactly 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "alibi_attention.cuh"
#include "async_copy.cuh"
#include "mma_fragments.cuh"

namespace bembed::cuda::alibi {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockM = 16 * kWarps;  // queries per CTA (forward, dQ)
constexpr int kBlockN = 64;           // keys per tile (forward, dQ) and per CTA (dK/dV)
constexpr int kPad = 8;               // 16-bit elements of padding per shared row: rows stay 16-byte aligned
                                      // and the 8 rows of each ldmatrix hit distinct banks
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kDefaultSharedLimit = 48 * 1024;

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

// The score x of a key with this key_bias: a masked key's is replaced, not offset, since its k row may hold
// inf or NaN (a padded buffer from torch.empty) and inf + −inf would be NaN in every real row.
__device__ __forceinline__ float keyed(float x, float bias) { return bias == 0.0f ? x : bias; }

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
// its group; pipeline_step, at tile n, starts tile n+1 (when below n_tiles, the end of the walk) into the other
// stage, waits for tile n's copies and returns its stage. The caller then needs a __syncthreads() before
// reading (other threads' copies) and another after its last read of the stage (the stage is refilled at step
// n+1).
template <int kRows, int D>
__device__ __forceinline__ void load_pair_async(uint16_t* stage, const uint16_t* x, const uint16_t* y, int64_t ts,
                                                int row0, int len) {
  load_tile_async<kRows, D>(stage, x, ts, row0, len);
  load_tile_async<kRows, D>(stage + kRows * (D + kPad), y, ts, row0, len);
  async_copy::commit();
}

// Starts the pipeline at tile n (its stage is n % 2, as pipeline_step expects).
template <int kRows, int D>
__device__ __forceinline__ void pipeline_start(uint16_t* stages, int n, const uint16_t* x, const uint16_t* y,
                                               int64_t ts, int len) {
  load_pair_async<kRows, D>(stages + (n % 2) * 2 * kRows * (D + kPad), x, y, ts, n * kRows, len);
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
// Launch helpers
// ---------------------------------------------------------------------------------------------------------

template <typename Kernel>
inline cudaError_t allow_shared(Kernel kernel, int bytes) {
  if (bytes <= kDefaultSharedLimit) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

// At least one tile per (head, sequence): the kernels stride over the rest (max_seqlen is only a hint).
inline dim3 grid_for(const AlibiAttentionParams& p, int rows_per_cta) {
  const int64_t tiles = (static_cast<int64_t>(p.max_seqlen) + rows_per_cta - 1) / rows_per_cta;  // no int overflow
  return dim3(static_cast<unsigned int>(std::max<int64_t>(1, tiles)), p.heads, p.batch);
}

inline bool empty_problem(const AlibiAttentionParams& p) { return p.batch == 0 || p.heads == 0 || p.total_tokens == 0; }

inline bool grid_fits(const AlibiAttentionParams& p) {
  return p.batch <= kAlibiMaxGridYZ && p.heads <= kAlibiMaxGridYZ && p.max_seqlen >= 0;
}

}  // namespace bembed::cuda::alibi
