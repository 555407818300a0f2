// cp.async (sm_80+): 16-byte global → shared copies that run in the background while the CTA computes.
// A thread's copies form groups (commit); wait<N>() returns once at most N of its newest groups are still
// in flight. Other threads' copies become visible only after wait<> and a __syncthreads().
#pragma once

#include <cstdint>

namespace bembed::cuda::async_copy {

// Copies 16 bytes from src to dst (both 16-byte aligned); with valid = false nothing is read and dst is
// zero-filled (src must still be a valid global address).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(dst))), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kInFlight>
__device__ __forceinline__ void wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kInFlight));
}

}  // namespace bembed::cuda::async_copy
