// Host emulation of mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} (tests/cuda_emulator). The fragment
// layout is written out here from the PTX ISA tables ("Matrix Fragments for mma.m16n8k16 with floating point
// type") on its own, not taken from csrc/cuda/mma_fragments.cuh, so that the two can check each other.
#pragma once

#include <cstring>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace emu {

inline float decode(__half h) { return __half2float(h); }
inline float decode(__nv_bfloat16 h) { return __bfloat162float(h); }

template <typename T>
float half_of(uint32_t reg, int upper) {
  const uint16_t bits = upper ? uint16_t(reg >> 16) : uint16_t(reg & 0xFFFFu);
  T h;
  std::memcpy(&h, &bits, 2);
  return decode(h);
}

template <typename T>
void mma_sync(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Warp& w = current_block->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  std::memcpy(w.a[lane], a, sizeof(a));
  std::memcpy(w.b[lane], b, sizeof(b));
  arrive_and_wait(w.barrier);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 8; ++i) {  // a_i sits in register i/2; rows g, g+8, g, g+8 for i/2 = 0..3
      const int row = g + 8 * ((i / 2) % 2);
      const int col = 2 * t + (i % 2) + 8 * (i / 4);
      A[row][col] = half_of<T>(w.a[l][i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {  // b_i sits in register i/2; k = 2t + i%2 (+8 for i >= 2), n = g
      B[2 * t + (i % 2) + 8 * (i / 2)][g] = half_of<T>(w.b[l][i / 2], i % 2);
    }
  }
  arrive_and_wait(w.barrier);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {  // c_i: row g (+8 for i >= 2), column 2t + i%2
    const int row = g + 8 * (i / 2), col = 2 * t + (i % 2);
    double sum = 0.0;
    for (int k = 0; k < 16; ++k) sum += double(A[row][k]) * double(B[k][col]);
    d[i] = float(double(d[i]) + sum);
  }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l names row l%8 of matrix l/8 (8 values, 16-byte
// aligned, inside the block's shared memory); register i gets, of matrix i, (row lane/4, columns 2(lane%4)
// and 2(lane%4)+1), or with .trans (rows 2(lane%4) and 2(lane%4)+1, column lane/4).
inline void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row_address, bool trans) {
  Warp& w = current_block->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  const auto* base = reinterpret_cast<const unsigned char*>(current_block->smem.data());
  const auto* at = reinterpret_cast<const unsigned char*>(row_address);
  if (reinterpret_cast<uintptr_t>(at) % 16 != 0 || at < base || at + 16 > base + current_block->smem.size()) {
    static const uint16_t zeros[8] = {};
    fault = true;
    row_address = zeros;
  }
  w.rows[lane] = row_address;
  arrive_and_wait(w.barrier);
  for (int i = 0; i < 4; ++i) {
    const uint16_t* const* m = &w.rows[8 * i];
    const int g = lane / 4, t = lane % 4;
    const uint16_t lo = trans ? m[2 * t][g] : m[g][2 * t];
    const uint16_t hi = trans ? m[2 * t + 1][g] : m[g][2 * t + 1];
    r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  arrive_and_wait(w.barrier);
}

}  // namespace emu
