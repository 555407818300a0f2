// ALiBi flash attention on CUDA, backward. The shared tiles, pipeline and boundary rules are in
// alibi_attention_tiles.cuh.
//
// Deterministic (the only atomics take maxima): a pre-kernel writes delta_i = rowsum(dO∘O) and the reach of
// each run of 16 query rows; the dK/dV kernel gives each CTA kBlockN keys (16 per warp) and loops over the query
// tiles that reach them, computing everything key-major (Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ) so that dV += Pᵀ·dO and dK += dSᵀ·Q stay in
// registers; the dQ kernel mirrors the forward (queries per CTA, loop over the key tiles they reach) and
// accumulates dQ += dS·K. P is recomputed as exp2(x − lse·log2e). Reach: alibi_attention_skip.cuh, with lse as
// each row's reference.
#include <cmath>
#include <cstdint>

#include "alibi_attention_skip.cuh"
#include "alibi_attention_tiles.cuh"

namespace bembed::cuda {
namespace {

using namespace alibi;

// Queries per step of the dK/dV kernel: fewer for D = 128 to keep dK, dV, Sᵀ and dPᵀ in registers.
template <int D>
constexpr int dkdv_block_m() {
  return D <= 64 ? 64 : 16;
}

// lse in base 2 for the backward; rows with no valid key (lse = −inf) and rows past the end get +inf so that
// exp2(x − lse2) is 0 for every x, −inf included.
__device__ __forceinline__ float backward_lse2(const float* lse, const Sequence& seq, int h, int i) {
  if (i >= seq.len) return INFINITY;
  const float l = lse[seq.lse_offset + h * seq.lse_head_stride + i];
  return l == -INFINITY ? INFINITY : l * kLog2e;
}

// delta_i = Σ_d dO[i, d]·O[i, d] in fp32, one warp per row, rows dealt round-robin to the warps of the
// grid; delta has lse's layout. With slopes, also each row's reach into its run's record (the largest wins), and
// the largest of all into the (sequence, head)'s slot.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) alibi_backward_delta_kernel(AlibiAttentionParams p, const T* dout,
                                                                        const T* out, const T* q, const float* lse,
                                                                        float* delta, float* workspace) {
  const int h = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence(p, b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t ts = int64_t(p.heads) * D;
  const int64_t head_base = seq.start * ts + int64_t(h) * D;
  const float slope2 = slope_log2(p, b, h);
  const float scale_log2 = p.softmax_scale * kLog2e;
  const float key_norm = workspace[int64_t(b) * p.heads + h];
  float largest = 0.0f;  // of this warp's rows' reach
  for (int i = blockIdx.x * kWarps + warp; i < seq.len; i += gridDim.x * kWarps) {
    float sum = 0.0f, qq = 0.0f;
    for (int d = lane; d < D; d += 32) {
      sum += to_float(dout[head_base + i * ts + d]) * to_float(out[head_base + i * ts + d]);
      const float x = to_float(q[head_base + i * ts + d]);
      qq += x * x;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      qq += __shfl_xor_sync(0xffffffffu, qq, offset);
    }
    if (lane == 0) delta[seq.lse_offset + h * seq.lse_head_stride + i] = sum;
    if (lane == 0 && skips(p, slope2)) {
      const float reach =
          row_reach(score_bound(sqrtf(qq), key_norm, scale_log2), backward_lse2(lse, seq, h, i), slope2, seq.len);
      if (reach > 0.0f) atomic_max_nonnegative(workspace + reach_record(p, seq.start, b, h, i), reach);  // −inf: none
      largest = fmaxf(largest, reach);
    }
  }
  if (lane == 0 && largest > 0.0f) atomic_max_nonnegative(workspace + largest_reach_slot(p, b, h), largest);
}

template <int D>
constexpr int dq_smem_bytes() {
  return (2 * kBlockM + 4 * kBlockN) * (D + kPad) * 2 + kBlockN * 4;
}

// dQ for kBlockM queries: loop over key tiles; dS = P∘(dP − delta) with dP = dO·Vᵀ; dQ = scale·Σ dS·K.
template <typename T, int D>
__device__ __forceinline__ void dq_tile(const AlibiAttentionParams& p, const Sequence& seq, int b, int h, int row0,
                                        const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                        const uint16_t* dout, const float* lse, const float* delta,
                                        const float* workspace, uint16_t* dq, unsigned char* smem) {
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

  const TileRange keys = key_tiles_reached<T, D>(
      p, seq, b, h, row0, q, nullptr, workspace, (seq.len + kBlockN - 1) / kBlockN,
      reinterpret_cast<double*>(s_key_bias), [&](int i, int, float, float) { return backward_lse2(lse, seq, h, i); });
  if (keys.first <= keys.last) {  // no tile (every row without a valid key): dQ = 0
    load_tile_async<kBlockM, D>(s_q, q + head_base, ts, row0, seq.len);  // committed with the first K/V tile
    load_tile_async<kBlockM, D>(s_do, dout + head_base, ts, row0, seq.len);
    pipeline_start<kBlockN, D>(s_kv, keys.first, k + head_base, v + head_base, ts, seq.len);
  }

  float acc[D / 8][4];
  zero(acc);
  for (int n = keys.first; n <= keys.last; ++n) {
    const int col0 = n * kBlockN;
    const uint16_t* s_k = pipeline_step<kBlockN, D>(s_kv, n, keys.last + 1, k + head_base, v + head_base, ts,
                                                    seq.len);
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
        const float p_lo =
            exp2f(keyed(s[nt][e] * scale_log2 - slope * fabsf(float(i_lo - j)), s_key_bias[c]) - lse2_lo);
        const float p_hi =
            exp2f(keyed(s[nt][2 + e] * scale_log2 - slope * fabsf(float(i_hi - j)), s_key_bias[c]) - lse2_hi);
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
                                                                     const float* delta, const float* workspace,
                                                                     uint16_t* dq) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Sequence seq = sequence(p, blockIdx.z);
  for (int tile = blockIdx.x; tile * kBlockM < seq.len; tile += gridDim.x) {
    __syncthreads();
    dq_tile<T, D>(p, seq, blockIdx.z, blockIdx.y, tile * kBlockM, q, k, v, dout, lse, delta, workspace, dq, smem);
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
                                          const uint16_t* dout, const float* lse, const float* delta,
                                          const float* workspace, uint16_t* dk, uint16_t* dv, unsigned char* smem) {
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

  static_assert((2 * kBlockN + 4 * kBlockMB) * kLd * 2 % 8 == 0 && 2 * kBlockMB * 4 >= 2 * kWarps * 8,
                "lse2 and delta hold the doubles of the tile-range scratch");
  const TileRange queries = query_tiles_reaching<kBlockMB>(p, seq, b, h, col0, workspace,
                                                           (seq.len + kBlockMB - 1) / kBlockMB,
                                                           reinterpret_cast<double*>(s_lse2));
  if (queries.first <= queries.last) {
    load_tile_async<kBlockN, D>(s_k, k + head_base, ts, col0, seq.len);  // committed with the first Q/dO tile
    load_tile_async<kBlockN, D>(s_v, v + head_base, ts, col0, seq.len);
    pipeline_start<kBlockMB, D>(s_qdo, queries.first, q + head_base, dout + head_base, ts, seq.len);
  }

  float acc_dk[D / 8][4], acc_dv[D / 8][4];
  zero(acc_dk);
  zero(acc_dv);
  for (int n = queries.first; n <= queries.last; ++n) {
    const int row0 = n * kBlockMB;
    const uint16_t* s_q = pipeline_step<kBlockMB, D>(s_qdo, n, queries.last + 1, q + head_base, dout + head_base, ts,
                                                     seq.len);
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
        const float p_lo = exp2f(keyed(st[nt][e] * scale_log2 - slope * fabsf(float(i - j_lo)), kb_lo) - s_lse2[c]);
        const float p_hi = exp2f(keyed(st[nt][2 + e] * scale_log2 - slope * fabsf(float(i - j_hi)), kb_hi) - s_lse2[c]);
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
                                                                       const float* delta, const float* workspace,
                                                                       uint16_t* dk, uint16_t* dv) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Sequence seq = sequence(p, blockIdx.z);
  for (int tile = blockIdx.x; tile * kBlockN < seq.len; tile += gridDim.x) {
    __syncthreads();
    dkdv_tile<T, D>(p, seq, blockIdx.z, blockIdx.y, tile * kBlockN, q, k, v, dout, lse, delta, workspace, dk, dv,
                    smem);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------------------

template <typename T, int D>
cudaError_t backward_typed(const AlibiAttentionParams& p, const void* dout, const void* q, const void* k,
                           const void* v, const void* out, const float* lse, float* delta, float* workspace,
                           void* dq, void* dk, void* dv, cudaStream_t stream) {
  const auto* q16 = static_cast<const uint16_t*>(q);
  const auto* k16 = static_cast<const uint16_t*>(k);
  const auto* v16 = static_cast<const uint16_t*>(v);
  const auto* do16 = static_cast<const uint16_t*>(dout);

  cudaError_t status = key_norms<T, D>(p, k, workspace, stream);
  if (status != cudaSuccess) return status;
  alibi_backward_delta_kernel<T, D><<<grid_for(p, kBlockM), kThreads, 0, stream>>>(
      p, static_cast<const T*>(dout), static_cast<const T*>(out), static_cast<const T*>(q), lse, delta, workspace);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;

  constexpr int kSmemDq = dq_smem_bytes<D>();
  const auto dq_kernel = alibi_backward_dq_kernel<T, D>;
  if ((status = allow_shared(dq_kernel, kSmemDq)) != cudaSuccess) return status;
  dq_kernel<<<grid_for(p, kBlockM), kThreads, kSmemDq, stream>>>(p, q16, k16, v16, do16, lse, delta, workspace,
                                                                 static_cast<uint16_t*>(dq));
  if ((status = cudaGetLastError()) != cudaSuccess) return status;

  constexpr int kSmemDkdv = dkdv_smem_bytes<D>();
  const auto dkdv_kernel = alibi_backward_dkdv_kernel<T, D>;
  if ((status = allow_shared(dkdv_kernel, kSmemDkdv)) != cudaSuccess) return status;
  dkdv_kernel<<<grid_for(p, kBlockN), kThreads, kSmemDkdv, stream>>>(
      p, q16, k16, v16, do16, lse, delta, workspace, static_cast<uint16_t*>(dk), static_cast<uint16_t*>(dv));
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_for_dtype(const AlibiAttentionParams& p, const void* dout, const void* q, const void* k,
                               const void* v, const void* out, const float* lse, float* delta, float* workspace,
                               void* dq, void* dk, void* dv, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return backward_typed<T, 32>(p, dout, q, k, v, out, lse, delta, workspace, dq, dk, dv, stream);
    case 64: return backward_typed<T, 64>(p, dout, q, k, v, out, lse, delta, workspace, dq, dk, dv, stream);
    case 128: return backward_typed<T, 128>(p, dout, q, k, v, out, lse, delta, workspace, dq, dk, dv, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

template <int D>
constexpr int backward_smem_bytes() {
  return std::max(dq_smem_bytes<D>(), dkdv_smem_bytes<D>());
}

int alibi_attention_backward_shared_bytes(int head_dim) {
  switch (head_dim) {
    case 32: return backward_smem_bytes<32>();
    case 64: return backward_smem_bytes<64>();
    case 128: return backward_smem_bytes<128>();
  }
  return 0;
}

cudaError_t alibi_attention_backward(const AlibiAttentionParams& params, DType dtype, const void* grad_out,
                                     const void* q, const void* k, const void* v, const void* out,
                                     const float* lse, float* delta, float* workspace, void* grad_q, void* grad_k,
                                     void* grad_v, cudaStream_t stream) {
  if (!grid_fits(params)) return cudaErrorInvalidValue;
  if (empty_problem(params)) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat16:
      return backward_for_dtype<__half>(params, grad_out, q, k, v, out, lse, delta, workspace, grad_q, grad_k,
                                        grad_v, stream);
    case DType::kBFloat16:
      return backward_for_dtype<__nv_bfloat16>(params, grad_out, q, k, v, out, lse, delta, workspace, grad_q, grad_k,
                                               grad_v, stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace bembed::cuda
