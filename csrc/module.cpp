// Lets `import bembed_ext._C` load the library (and run its op registrations). Kernels are reached
// through torch.ops.bembed, never through Python bindings, so torch.compile can trace them.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "bembed kernels (see torch.ops.bembed)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
