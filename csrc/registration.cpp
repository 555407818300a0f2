// The schemas of every bembed op, in one place. Kernels register per device in csrc/cpu and csrc/cuda;
// fake (meta) and autograd implementations are registered from Python (bembed_ext/ops/*.py).
#include <torch/library.h>

TORCH_LIBRARY(bembed, m) {
  // GEGLU (bembed_ext/ops/geglu.py)
  m.def("geglu(Tensor x) -> Tensor");
  m.def("geglu_backward(Tensor grad_out, Tensor x) -> Tensor");
}
