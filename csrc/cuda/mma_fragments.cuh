// Warp-level tensor-core tiles for sm_80+: mma.sync.m16n8k16 (fp16/bf16 in, fp32 accumulate) and the
// register fragments it reads, loaded from shared memory with plain 32-bit / 16-bit loads so that every
// index below can be checked against the PTX ISA fragment tables ("Matrix Fragments for mma.m16n8k16"):
//   lane = 4·g + t (g = groupID 0..7, t = thread-in-group 0..3)
//   A (16×16, row-major): reg0 = A[g][2t..2t+1],   reg1 = A[g+8][2t..2t+1],
//                         reg2 = A[g][2t+8..2t+9], reg3 = A[g+8][2t+8..2t+9]
//   B (16×8, k×n):        reg0 = B[2t..2t+1][g],   reg1 = B[2t+8..2t+9][g]
//   C (16×8, fp32):       c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// The lower-indexed element of a pair sits in the low 16 bits. Shared tiles hold raw 16-bit values.
#pragma once

#include <cstdint>

#include "dtype.cuh"

namespace bembed::cuda::mma {

template <typename T>
struct Ops;

template <>
struct Ops<__half> {
  // d += a·b
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

template <>
struct Ops<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

// Two adjacent 16-bit values (the address is even, so 4-byte aligned when the tile is).
__device__ __forceinline__ uint32_t load_pair(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// A = tile[r0 .. r0+16)[c0 .. c0+16) of a row-major shared tile with leading dimension ld.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint16_t* tile, int ld, int r0, int c0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const uint16_t* p = tile + (r0 + g) * ld + c0 + 2 * t;
  a[0] = load_pair(p);
  a[1] = load_pair(p + 8 * ld);
  a[2] = load_pair(p + 8);
  a[3] = load_pair(p + 8 * ld + 8);
}

// B[k][n] = tile[n0 + n][k0 + k]: the tile stores Bᵀ row-major (K for Q·Kᵀ: rows are the n index).
__device__ __forceinline__ void load_b_transposed(uint32_t (&b)[2], const uint16_t* tile, int ld, int n0, int k0,
                                                  int lane) {
  const int g = lane >> 2, t = lane & 3;
  const uint16_t* p = tile + (n0 + g) * ld + k0 + 2 * t;
  b[0] = load_pair(p);
  b[1] = load_pair(p + 8);
}

// B[k][n] = tile[k0 + k][n0 + n]: the tile stores B row-major (V for P·V: rows are the k index).
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const uint16_t* tile, int ld, int k0, int n0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const uint16_t* p = tile + (k0 + 2 * t) * ld + n0 + g;
  b[0] = uint32_t(p[0]) | (uint32_t(p[ld]) << 16);
  b[1] = uint32_t(p[8 * ld]) | (uint32_t(p[9 * ld]) << 16);
}

// The A fragment for k-columns [16·kk, 16·kk+16) of a 16-row fp32 accumulator held as C fragments acc[n-tile]
// (n-tiles of 8 columns): the C layout of n-tiles 2kk and 2kk+1 is exactly the A layout, after rounding.
template <typename T, int kTiles>
__device__ __forceinline__ void accumulator_to_a(uint32_t (&a)[4], const float (&acc)[kTiles][4], int kk) {
  a[0] = Ops<T>::pack(acc[2 * kk][0], acc[2 * kk][1]);
  a[1] = Ops<T>::pack(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = Ops<T>::pack(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  a[3] = Ops<T>::pack(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// Reductions over the 4 lanes of a group (the lanes holding one accumulator row).
__device__ __forceinline__ float group_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float group_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace bembed::cuda::mma
