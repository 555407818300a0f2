// Warp-level tensor-core tiles for sm_80+: mma.sync.m16n8k16 (fp16/bf16 in, fp32 accumulate) and the
// register fragments it reads, loaded from shared memory with ldmatrix. The PTX ISA fragment tables
// ("Matrix Fragments for mma.m16n8k16"), against which every index below can be checked:
//   lane = 4·g + t (g = groupID 0..7, t = thread-in-group 0..3)
//   A (16×16, row-major): reg0 = A[g][2t..2t+1],   reg1 = A[g+8][2t..2t+1],
//                         reg2 = A[g][2t+8..2t+9], reg3 = A[g+8][2t+8..2t+9]
//   B (16×8, k×n):        reg0 = B[2t..2t+1][g],   reg1 = B[2t+8..2t+9][g]
//   C (16×8, fp32):       c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// The lower-indexed element of a pair sits in the low 16 bits. Shared tiles hold raw 16-bit values; every
// 8-element row segment that ldmatrix reads must be 16-byte aligned (tiles pad rows to a multiple of 8).
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

// ldmatrix.x4: lane l gives the address of row l%8 of 8×8 matrix l/8 (8 contiguous 16-bit values, 16-byte
// aligned). Register i receives, of matrix i, the pair (row lane/4; columns 2(lane%4), 2(lane%4)+1); with
// .trans the pair (rows 2(lane%4), 2(lane%4)+1; column lane/4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(row_address))));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(row_address))));
}

// A = tile[r0 .. r0+16)[c0 .. c0+16) of a row-major shared tile with leading dimension ld.
// Matrices 0..3 = (rows +0, cols +0), (rows +8, cols +0), (rows +0, cols +8), (rows +8, cols +8): reg0..reg3.
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint16_t* tile, int ld, int r0, int c0, int lane) {
  const int m = lane / 8;
  ldmatrix_x4(a, tile + (r0 + lane % 8 + 8 * (m % 2)) * ld + c0 + 8 * (m / 2));
}

// The B fragments of n-tiles [n0, n0+8) and [n0+8, n0+16) with B[k][n] = tile[n][k0 + k]: the tile stores Bᵀ
// row-major (K for Q·Kᵀ). Matrices 0..3 = (rows n0, cols k0), (n0, k0+8), (n0+8, k0), (n0+8, k0+8).
__device__ __forceinline__ void load_b_transposed_x2(uint32_t (&b)[2][2], const uint16_t* tile, int ld, int n0,
                                                     int k0, int lane) {
  const int m = lane / 8;
  uint32_t r[4];
  ldmatrix_x4(r, tile + (n0 + lane % 8 + 8 * (m / 2)) * ld + k0 + 8 * (m % 2));
  b[0][0] = r[0];
  b[0][1] = r[1];
  b[1][0] = r[2];
  b[1][1] = r[3];
}

// The B fragments of n-tiles [n0, n0+8) and [n0+8, n0+16) with B[k][n] = tile[k0 + k][n]: the tile stores B
// row-major (V for P·V), read transposed. Matrices 0..3 = (rows k0, cols n0), (k0+8, n0), (k0, n0+8), (k0+8, n0+8).
__device__ __forceinline__ void load_b_x2(uint32_t (&b)[2][2], const uint16_t* tile, int ld, int k0, int n0,
                                          int lane) {
  const int m = lane / 8;
  uint32_t r[4];
  ldmatrix_x4_trans(r, tile + (k0 + lane % 8 + 8 * (m % 2)) * ld + n0 + 8 * (m / 2));
  b[0][0] = r[0];
  b[0][1] = r[1];
  b[1][0] = r[2];
  b[1][1] = r[3];
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
