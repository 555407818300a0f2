// GEGLU on CPU: y = gelu_erf(a) * b with a = x[..., :I], b = x[..., I:]; one pass over x forward, one
// pass over (grad_out, x) backward. Rows run in parallel; within a row, SIMD vectors of float (double for
// float64 inputs, so gradcheck sees a float64 kernel). bf16/fp16 are widened to float in registers.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../geglu.h"

namespace bembed {
namespace {

using at::vec::Vectorized;

// Loads/stores `n` (≤ kWidth) elements of scalar_t as kParts vectors of the compute type.
template <typename scalar_t, typename = void>
struct Lanes {
  using V = Vectorized<scalar_t>;
  static constexpr int kParts = 1;
  static constexpr int64_t kWidth = V::size();
  static void load(const scalar_t* p, int64_t n, V* out) { out[0] = V::loadu(p, n); }
  static void store(scalar_t* p, int64_t n, const V* v) { v[0].store(p, n); }
};

template <typename scalar_t>
struct Lanes<scalar_t, std::enable_if_t<at::vec::is_reduced_floating_point_v<scalar_t>>> {
  using V = Vectorized<float>;
  static constexpr int kParts = 2;
  static constexpr int64_t kWidth = Vectorized<scalar_t>::size();
  static void load(const scalar_t* p, int64_t n, V* out) {
    auto [lo, hi] = at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(p, n));
    out[0] = lo;
    out[1] = hi;
  }
  static void store(scalar_t* p, int64_t n, const V* v) {
    at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p, n);
  }
};

// Φ(a) = ½(1 + erf(a/√2)) and φ(a) = exp(−a²/2)/√(2π): gelu(a) = a·Φ(a), gelu'(a) = Φ(a) + a·φ(a).
template <typename V>
inline V normal_cdf(const V& a) {
  return (V(1) + (a * V(M_SQRT1_2)).erf()) * V(0.5);
}

template <typename V>
inline V normal_pdf(const V& a) {
  constexpr double kInvSqrt2Pi = 0.3989422804014327;
  return (a * a * V(-0.5)).exp() * V(kInvSqrt2Pi);
}

// Enough work per task (~32k elements touched, torch's own grain) to amortise the thread hand-off.
int64_t rows_per_task(int64_t row_elems) {
  constexpr int64_t kGrainElems = 32768;
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(row_elems, 1));
}

template <typename scalar_t>
void geglu_forward_kernel(const scalar_t* x, scalar_t* y, int64_t rows, int64_t I) {
  using L = Lanes<scalar_t>;
  at::parallel_for(0, rows, rows_per_task(3 * I), [&](int64_t begin, int64_t end) {
    typename L::V a[L::kParts], b[L::kParts], out[L::kParts];
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* xa = x + row * 2 * I;
      const scalar_t* xb = xa + I;
      scalar_t* yr = y + row * I;
      for (int64_t j = 0; j < I; j += L::kWidth) {
        const int64_t n = std::min(L::kWidth, I - j);
        L::load(xa + j, n, a);
        L::load(xb + j, n, b);
        for (int p = 0; p < L::kParts; ++p) out[p] = a[p] * normal_cdf(a[p]) * b[p];
        L::store(yr + j, n, out);
      }
    }
  });
}

template <typename scalar_t>
void geglu_backward_kernel(const scalar_t* grad, const scalar_t* x, scalar_t* dx, int64_t rows, int64_t I) {
  using L = Lanes<scalar_t>;
  at::parallel_for(0, rows, rows_per_task(5 * I), [&](int64_t begin, int64_t end) {
    typename L::V g[L::kParts], a[L::kParts], b[L::kParts], da[L::kParts], db[L::kParts];
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* xa = x + row * 2 * I;
      const scalar_t* xb = xa + I;
      const scalar_t* gr = grad + row * I;
      scalar_t* dxa = dx + row * 2 * I;
      scalar_t* dxb = dxa + I;
      for (int64_t j = 0; j < I; j += L::kWidth) {
        const int64_t n = std::min(L::kWidth, I - j);
        L::load(gr + j, n, g);
        L::load(xa + j, n, a);
        L::load(xb + j, n, b);
        for (int p = 0; p < L::kParts; ++p) {
          const auto cdf = normal_cdf(a[p]);
          da[p] = g[p] * b[p] * (cdf + a[p] * normal_pdf(a[p]));
          db[p] = g[p] * a[p] * cdf;
        }
        L::store(dxa + j, n, da);
        L::store(dxb + j, n, db);
      }
    }
  });
}

constexpr auto kCpuDtypes = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf};

at::Tensor geglu_cpu(const at::Tensor& x) {
  check_geglu_input(x, "bembed.geglu");
  check_dtype(x, "bembed.geglu", "x", kCpuDtypes);
  const auto xc = x.contiguous();
  auto y = at::empty(geglu_output_shape(x), x.options());
  const int64_t I = x.size(-1) / 2;
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bembed_geglu_cpu", [&] {
    geglu_forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                   y.numel() / I, I);
  });
  return y;
}

at::Tensor geglu_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x) {
  check_geglu_input(x, "bembed.geglu_backward");
  check_dtype(x, "bembed.geglu_backward", "x", kCpuDtypes);
  check_geglu_grad(grad_out, x, "bembed.geglu_backward");
  const auto xc = x.contiguous();
  const auto gc = grad_out.contiguous();
  auto dx = at::empty(x.sizes(), x.options());
  const int64_t I = x.size(-1) / 2;
  if (gc.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bembed_geglu_backward_cpu", [&] {
    geglu_backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                    dx.mutable_data_ptr<scalar_t>(), gc.numel() / I, I);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(bembed, CPU, m) {
  m.impl("geglu", &geglu_cpu);
  m.impl("geglu_backward", &geglu_backward_cpu);
}

}  // namespace bembed
