// ALiBi flash attention on CUDA, forward. The shared tiles, pipeline and boundary rules are in
// alibi_attention_tiles.cuh.
//
// A CTA owns kBlockM = 64 queries of one (sequence, head), 16 per warp, and walks the key tiles of
// kBlockN = 64 its rows reach (alibi_attention_skip.cuh; all of them without slopes) with an online softmax in
// base 2: logits x = s·scale·log2e − slope·log2e·|i−j| (−inf for masked keys), running max m and sum l;
// lse = (m + log2 l)·ln2 is saved per row.
#include <cmath>
#include <cstdint>

#include "alibi_attention_skip.cuh"
#include "alibi_attention_tiles.cuh"

namespace bembed::cuda {
namespace {

using namespace alibi;

template <int D>
constexpr int forward_smem_bytes() {
  return (kBlockM + 4 * kBlockN) * (D + kPad) * 2 + kBlockN * 4;
}

// One query tile [row0, row0 + kBlockM) of sequence b, head h.
template <typename T, int D>
__device__ __forceinline__ void forward_tile(const AlibiAttentionParams& p, const Sequence& seq, int b, int h,
                                             int row0, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                             uint16_t* out, float* lse, const float* workspace, unsigned char* smem) {
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

  // The row's score of a real key j (as the loop below computes it), less its rounding, is the reference.
  const TileRange keys = key_tiles_reached<T, D>(
      p, seq, b, h, row0, q, k, workspace, (seq.len + kBlockN - 1) / kBlockN,
      reinterpret_cast<double*>(s_key_bias), [&](int i, int j, float score, float bound) {
        return score - slope * fabsf(float(i - j)) - kBoundSlack * bound;
      });
  if (keys.first <= keys.last) {
    load_tile_async<kBlockM, D>(s_q, q + head_base, ts, row0, seq.len);  // committed with the first K/V tile
    pipeline_start<kBlockN, D>(s_kv, keys.first, k + head_base, v + head_base, ts, seq.len);
  }

  float o[D / 8][4];
  zero(o);
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running max of x (base-2 logits)
  float l_lo = 0.0f, l_hi = 0.0f;            // this lane's part of the running sum (group-reduced at the end)

  for (int n = keys.first; n <= keys.last; ++n) {
    const int col0 = n * kBlockN;
    const uint16_t* s_k = pipeline_step<kBlockN, D>(s_kv, n, keys.last + 1, k + head_base, v + head_base, ts,
                                                    seq.len);
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
        s[nt][e] = keyed(s[nt][e] * scale_log2 - slope * fabsf(float(i_lo - j)), s_key_bias[c]);
        s[nt][2 + e] = keyed(s[nt][2 + e] * scale_log2 - slope * fabsf(float(i_hi - j)), s_key_bias[c]);
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
                                                                 uint16_t* out, float* lse,
                                                                 const float* workspace) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Sequence seq = sequence(p, blockIdx.z);
  for (int tile = blockIdx.x; tile * kBlockM < seq.len; tile += gridDim.x) {
    __syncthreads();  // the previous tile's shared memory is no longer read
    forward_tile<T, D>(p, seq, blockIdx.z, blockIdx.y, tile * kBlockM, q, k, v, out, lse, workspace, smem);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------------------

template <typename T, int D>
cudaError_t forward_typed(const AlibiAttentionParams& p, const void* q, const void* k, const void* v, void* out,
                          float* lse, float* workspace, cudaStream_t stream) {
  cudaError_t status = key_norms<T, D>(p, k, workspace, stream);
  if (status != cudaSuccess) return status;
  constexpr int kSmem = forward_smem_bytes<D>();
  const auto kernel = alibi_forward_kernel<T, D>;
  if ((status = allow_shared(kernel, kSmem)) != cudaSuccess) return status;
  kernel<<<grid_for(p, kBlockM), kThreads, kSmem, stream>>>(p, static_cast<const uint16_t*>(q),
                                                            static_cast<const uint16_t*>(k),
                                                            static_cast<const uint16_t*>(v),
                                                            static_cast<uint16_t*>(out), lse, workspace);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_for_dtype(const AlibiAttentionParams& p, const void* q, const void* k, const void* v, void* out,
                              float* lse, float* workspace, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return forward_typed<T, 32>(p, q, k, v, out, lse, workspace, stream);
    case 64: return forward_typed<T, 64>(p, q, k, v, out, lse, workspace, stream);
    case 128: return forward_typed<T, 128>(p, q, k, v, out, lse, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int alibi_attention_forward_shared_bytes(int head_dim) {
  switch (head_dim) {
    case 32: return forward_smem_bytes<32>();
    case 64: return forward_smem_bytes<64>();
    case 128: return forward_smem_bytes<128>();
  }
  return 0;
}

int64_t alibi_attention_workspace_floats(const AlibiAttentionParams& params) {
  return alibi::skip_workspace_floats(params);
}

cudaError_t alibi_attention_forward(const AlibiAttentionParams& params, DType dtype, const void* q, const void* k,
                                    const void* v, void* out, float* lse, float* workspace, cudaStream_t stream) {
  if (!grid_fits(params)) return cudaErrorInvalidValue;
  if (empty_problem(params)) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat16: return forward_for_dtype<__half>(params, q, k, v, out, lse, workspace, stream);
    case DType::kBFloat16: return forward_for_dtype<__nv_bfloat16>(params, q, k, v, out, lse, workspace, stream);
    case DType::kFloat32: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace bembed::cuda
