// Operator schemas of dcnviz. Kernels register themselves per backend in csrc/cpu and csrc/cuda;
// fake (meta) kernels and autograd are registered from Python (dcnviz/ops).
#include <Python.h>
#include <torch/library.h>

#include "cpu/cpu_isa.h"

TORCH_LIBRARY(dcnviz, m) {
  m.def(
      "deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, int stride_h, int stride_w, "
      "int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, int deformable_groups) -> Tensor");
  m.def(
      "_deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, "
      "int deformable_groups) -> (Tensor grad_input, Tensor grad_offset, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "deform_psroi_pool(Tensor input, Tensor rois, Tensor? offset, float spatial_scale, int output_dim, "
      "int group_size, int pooled_size, int part_size, int sample_per_part, float trans_std) -> Tensor");
  m.def(
      "_deform_psroi_pool_backward(Tensor grad_output, Tensor input, Tensor rois, Tensor? offset, "
      "float spatial_scale, int output_dim, int group_size, int pooled_size, int part_size, "
      "int sample_per_part, float trans_std) -> (Tensor grad_input, Tensor grad_offset)");
  m.def(
      "psroi_pool(Tensor input, Tensor rois, float spatial_scale, int output_dim, int group_size, "
      "int pooled_size) -> Tensor");
  m.def(
      "_psroi_pool_backward(Tensor grad_output, Tensor input, Tensor rois, float spatial_scale, "
      "int output_dim, int group_size, int pooled_size) -> Tensor");
  // Greedy NMS of the official py_nms, boxes visited in `order` (dcnviz.models.boxes.nms); CPU only.
  m.def("_nms(Tensor boxes, Tensor order, float thresh, int max_keep) -> Tensor");
}

// The instruction set of the CPU kernels' hand-picked loops on this machine (cpu_isa.h): "avx512",
// "avx2" or "baseline", for benchmark reports (their speed differs by up to ~10x between the three).
static PyObject* cpu_kernels(PyObject*, PyObject*) {
  const char* isa = dcnviz::use_avx512() ? "avx512" : dcnviz::use_avx2() ? "avx2" : "baseline";
  return PyUnicode_FromString(isa);
}

// `import dcnviz._C` runs the static registrations above; the module itself holds cpu_kernels().
extern "C" PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"cpu_kernels", cpu_kernels, METH_NOARGS, "Instruction set of the CPU kernels: avx512, avx2 or baseline."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
