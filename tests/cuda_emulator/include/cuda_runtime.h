// Host emulation of the small part of the CUDA runtime and device language that bembed's kernels use, so
// that csrc/cuda sources can run (slowly, exactly as written) on a CPU. Each CTA runs as blockDim.x
// std::threads; __syncthreads is a block barrier; warp shuffles and mma.sync exchange through per-warp
// buffers between warp barriers. Blocks run one after another. Test-only code (tests/cuda_emulator/).
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  uint32_t x, y, z, w;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }

namespace emu {

constexpr int kMaxSharedBytes = 227 * 1024;  // sm_90's opt-in limit; sm_80 allows 163 KB

struct Warp {
  std::barrier<> barrier{32};
  float f[32];
  uint32_t a[32][4], b[32][2];
  float c[32][4];
};

struct Block {
  explicit Block(int threads) : barrier(threads), warps(threads / 32) {
    for (auto& w : warps) w = std::make_unique<Warp>();
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> smem;
};

inline thread_local Block* current_block = nullptr;
// What the launcher checks after the fact: a kernel may not have asked for more than the attribute allows.
inline int max_dynamic_smem = 48 * 1024;
inline cudaError_t last_error = cudaSuccess;

}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;

inline void __syncthreads() { emu::current_block->barrier.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::Warp& w = *emu::current_block->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  w.f[lane] = v;
  w.barrier.arrive_and_wait();
  const float r = w.f[lane ^ lane_mask];
  w.barrier.arrive_and_wait();
  return r;
}

template <typename Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int bytes) {
  if (bytes > emu::kMaxSharedBytes) return cudaErrorInvalidValue;
  emu::max_dynamic_smem = bytes;
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}

namespace emu {

inline unsigned char* shared_memory() { return current_block->smem.data(); }

// Runs kernel<<<grid, block, smem_bytes>>>(args...) block by block. Shared memory starts as 0xFF bytes
// (NaN in every float format), so a read of a never-written element poisons the result.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, int block_threads, int smem_bytes, cudaStream_t, Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block_threads % 32 != 0 || smem_bytes > max_dynamic_smem) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  gridDim = grid;
  blockDim = dim3(block_threads);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block block(block_threads);
        block.smem.assign(smem_bytes, 0xFF);
        std::vector<std::thread> threads;
        for (int t = 0; t < block_threads; ++t) {
          threads.emplace_back([&, t] {
            current_block = &block;
            threadIdx = dim3(t);
            blockIdx = dim3(x, y, z);
            kernel(args...);
          });
        }
        for (auto& th : threads) th.join();
      }
    }
  }
  max_dynamic_smem = 48 * 1024;
}

}  // namespace emu
