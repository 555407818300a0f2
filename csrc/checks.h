// Argument checks shared by every op. They raise c10::ValueError / c10::TypeError, which Python sees as
// ValueError / TypeError, and always name the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <sstream>
#include <string>

namespace bembed {

inline std::string dtype_list(std::initializer_list<at::ScalarType> dtypes) {
  std::ostringstream out;
  const char* sep = "";
  for (auto dtype : dtypes) {
    out << sep << c10::toString(dtype);
    sep = ", ";
  }
  return out.str();
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* name,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto dtype : allowed) {
    if (t.scalar_type() == dtype) return;
  }
  TORCH_CHECK_TYPE(false, op, ": argument '", name, "' must have dtype in {", dtype_list(allowed), "} on ",
                   t.device().type(), ", got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": argument '", name, "' must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                              const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(), " but '",
                    ref_name, "' is on ", ref.device());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                             const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": argument '", name, "' has dtype ",
                   t.scalar_type(), " but '", ref_name, "' has ", ref.scalar_type());
}

}  // namespace bembed
