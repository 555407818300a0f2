// Host emulation of the small part of the CUDA runtime and device language that bembed's kernels use, so
// that csrc/cuda sources can run (slowly, exactly as written) on a CPU. Each CTA runs as blockDim.x fibers
// (ucontext) on one OS thread, switched only at barriers; __syncthreads is a block barrier; warp shuffles,
// mma.sync and ldmatrix exchange through per-warp buffers between warp barriers; cp.async copies run at
// the wait that must complete them (or at issue, eager_copies). Blocks run one after another. Test-only code
// (tests/cuda_emulator/).
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
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
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorIllegalAddress = 700,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }

namespace emu {

constexpr int kMaxSharedBytes = 227 * 1024;  // sm_90's opt-in limit; sm_80 allows 163 KB
constexpr size_t kStackBytes = 256 * 1024;

// Threads of a CTA are fibers on one OS thread. The scheduler runs one warp at a time as far as it can go
// (until all its lanes wait at __syncthreads), so warps drift apart as much as the barriers allow: a
// missing __syncthreads between one warp's shared-memory write and another's read shows up as wrong data.
struct Barrier {
  int needed = 0, arrived = 0;
  unsigned generation = 0;
};

struct Warp {
  Barrier barrier;
  float f[32];
  double d[32];
  uint32_t a[32][4], b[32][2];
  const uint16_t* rows[32];
};

// One 16-byte cp.async; valid = false zero-fills dst.
struct Copy {
  void* dst;
  const void* src;
  bool valid;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  bool done = false;
  const Barrier* waiting_at = nullptr;    // the barrier it waits at, if any
  unsigned waiting_generation = 0;
  std::vector<Copy> open;                 // cp.async issued since the last commit
  std::deque<std::vector<Copy>> groups;   // committed, not yet waited for (oldest first)
};

struct Block {
  explicit Block(int threads) : warps(threads / 32), fibers(threads) {
    barrier.needed = threads;
    for (auto& w : warps) w.barrier.needed = 32;
  }
  Barrier barrier;
  std::vector<Warp> warps;
  std::vector<Fiber> fibers;
  std::vector<unsigned char> smem;
};

inline Block* current_block = nullptr;
inline ucontext_t scheduler;
inline std::function<void()> kernel_body;
inline long progress = 0;  // arrivals and exits: a full round without any means a deadlock
// Set by an emulated instruction that the hardware would fault on (e.g. a misaligned ldmatrix row), or by
// a barrier that some threads never reach.
inline bool fault = false;
inline int max_dynamic_smem = 48 * 1024;
// cp.async timing: lazily (at the wait that must complete it: catches reads before the wait) or eagerly (at
// issue: catches a stage refilled while other threads still read it).
inline bool eager_copies = false;
inline cudaError_t last_error = cudaSuccess;

}  // namespace emu

inline dim3 threadIdx, blockIdx, gridDim, blockDim;

namespace emu {

inline void arrive_and_wait(Barrier& b) {
  ++progress;
  if (++b.arrived == b.needed) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  Fiber& f = current_block->fibers[threadIdx.x];
  f.waiting_at = &b;
  f.waiting_generation = b.generation;
  while (b.generation == f.waiting_generation) swapcontext(&f.context, &scheduler);
  f.waiting_at = nullptr;
}

inline void fiber_main() {
  kernel_body();
  Fiber& f = current_block->fibers[threadIdx.x];
  for (const auto& group : f.groups) {
    if (!group.empty()) fault = true;  // exited with copies in flight
  }
  if (!f.open.empty()) fault = true;
  f.done = true;
  ++progress;
}

inline void run_copy(const Copy& c) {
  if (c.valid) {
    std::memcpy(c.dst, c.src, 16);
  } else {
    std::memset(c.dst, 0, 16);
  }
}

inline void cp_async_16(void* dst, const void* src, bool valid) {
  auto* at = static_cast<unsigned char*>(dst);
  unsigned char* base = current_block->smem.data();
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0 || at < base ||
      at + 16 > base + current_block->smem.size()) {
    fault = true;
    return;
  }
  const Copy c{dst, src, valid};
  if (eager_copies) {
    run_copy(c);
  } else {
    current_block->fibers[threadIdx.x].open.push_back(c);
  }
}

inline void cp_async_commit() {
  Fiber& f = current_block->fibers[threadIdx.x];
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

inline void cp_async_wait(int in_flight) {
  Fiber& f = current_block->fibers[threadIdx.x];
  while (int(f.groups.size()) > in_flight) {
    for (const Copy& c : f.groups.front()) run_copy(c);
    f.groups.pop_front();
  }
}

inline unsigned char* shared_memory() { return current_block->smem.data(); }

}  // namespace emu

inline void __syncthreads() { emu::arrive_and_wait(emu::current_block->barrier); }

namespace emu {

// A warp shuffle: each lane posts its value in the warp's exchange buffer of its type, then reads its partner's.
template <typename T>
inline T shuffle_xor(T (emu::Warp::*buffer)[32], T v, int lane_mask) {
  Warp& w = current_block->warps[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  (w.*buffer)[lane] = v;
  arrive_and_wait(w.barrier);
  const T r = (w.*buffer)[lane ^ lane_mask];
  arrive_and_wait(w.barrier);
  return r;
}

}  // namespace emu

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) { return emu::shuffle_xor(&emu::Warp::f, v, lane_mask); }
inline double __shfl_xor_sync(unsigned, double v, int lane_mask) {
  return emu::shuffle_xor(&emu::Warp::d, v, lane_mask);
}

// Fibers switch only at barriers, so a plain read-modify-write is atomic here.
inline int atomicMax(int* address, int value) {
  const int old = *address;
  if (value > old) *address = value;
  return old;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline cudaError_t cudaMemsetAsync(void* at, int value, size_t bytes, cudaStream_t) {
  std::memset(at, value, bytes);
  return cudaSuccess;
}

// The hardware's __expf is an approximation (2 ulp + a relative error growing with |x|); the emulation
// computes the exact float exp, so tests of code using it check everything but that approximation.
inline float __expf(float x) { return std::exp(x); }

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
  kernel_body = [&] { kernel(args...); };
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block block(block_threads);
        block.smem.assign(smem_bytes, 0xFF);
        current_block = &block;
        blockIdx = dim3(x, y, z);
        for (auto& f : block.fibers) {
          getcontext(&f.context);
          f.context.uc_stack.ss_sp = f.stack.get();
          f.context.uc_stack.ss_size = kStackBytes;
          f.context.uc_link = &scheduler;
          makecontext(&f.context, fiber_main, 0);
        }
        const int warps = block_threads / 32;
        for (int pass = 0, live = 1; live; ++pass) {
          live = 0;
          const long before = progress;
          for (int i = 0; i < warps && !fault; ++i) {
            const int w = (pass + i) % warps;  // rotate which warp runs ahead
            for (long warp_before = -1; warp_before != progress && !fault;) {
              warp_before = progress;
              for (int t = 32 * w; t < 32 * w + 32; ++t) {
                Fiber& f = block.fibers[t];
                if (f.done) continue;
                live = 1;
                if (f.waiting_at == &block.barrier && block.barrier.generation == f.waiting_generation) continue;
                threadIdx = dim3(t);
                swapcontext(&scheduler, &f.context);
              }
            }
          }
          if (live && progress == before) fault = true;  // every live thread waits at a barrier: deadlock
          if (fault) break;
        }
        current_block = nullptr;
        if (fault) {
          fault = false;
          last_error = cudaErrorIllegalAddress;
          return;
        }
      }
    }
  }
  max_dynamic_smem = 48 * 1024;
}

}  // namespace emu
