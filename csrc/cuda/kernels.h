// The CUDA kernels' launchers, for the ops' host code (the *_cuda.cpp files: checks, allocation,
// dtype dispatch, cuBLAS GEMMs, registration). Kernels and launchers live in the *_kernels.cu files,
// which include no ATen or dispatcher header: nvcc parses a .cu once per target architecture plus once
// for the host, and with <ATen/ATen.h> and <torch/library.h> that parsing was ~85 % of the build
// (~100 s a file on two cores, against ~13 s now). Each launcher is instantiated for float, double,
// c10::Half and c10::BFloat16, the types the host code dispatches over; half types compute and
// accumulate in at::opmath_type (float32).
#pragma once
#include <ATen/OpMathType.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../conv_geometry.h"
#include "../pooling.h"

// The launchers' explicit instantiations: the types of AT_DISPATCH_FLOATING_TYPES_AND2(kHalf, kBFloat16).
#define DCNVIZ_FOR_EACH_FLOATING_TYPE(M) M(float) M(double) M(c10::Half) M(c10::BFloat16)

namespace dcnviz {

// deform_conv2d on a chunk of B images (x_cl channels-last (B, H, W, C), offsets (B, 2*DG*K, Ho, Wo)),
// columns (G, B*P, K*C/G) tap-major and channel-minor within a row:
// columns = im2col(x_cl); grad_x_cl += col2im(grad_columns); grad_offset = d(columns)/d(offset) . grad_columns.
template <typename T>
void launch_deform_im2col(const T* x_cl, const T* offset, const ConvGeometry& g, int64_t B, T* columns,
                          cudaStream_t stream);
template <typename T>
void launch_deform_col2im(const at::opmath_type<T>* grad_columns, const T* offset, const ConvGeometry& g, int64_t B,
                          at::opmath_type<T>* grad_x_cl, cudaStream_t stream);
template <typename T>
void launch_deform_offset_grad(const at::opmath_type<T>* grad_columns, const T* x_cl, const T* offset,
                               const ConvGeometry& g, int64_t B, T* grad_offset, cudaStream_t stream);

// psroi_pool: `total` output bins; the backward adds into grad_input (zeroed by the caller).
template <typename T>
void launch_psroi_pool_forward(const T* input, const T* rois, T* output, const PoolGeometry& g, int64_t total,
                               cudaStream_t stream);
template <typename T>
void launch_psroi_pool_backward(const T* grad, const T* rois, at::opmath_type<T>* grad_input, const PoolGeometry& g,
                                int64_t total, cudaStream_t stream);

// deform_psroi_pool: offset and grad_offset are null without offsets (g.has_offset false).
template <typename T>
void launch_deform_psroi_pool_forward(const T* input, const T* rois, const T* offset, T* output,
                                      const DeformPoolGeometry& g, int64_t total, cudaStream_t stream);
template <typename T>
void launch_deform_psroi_pool_backward(const T* grad, const T* input, const T* rois, const T* offset,
                                       at::opmath_type<T>* grad_input, at::opmath_type<T>* grad_offset,
                                       const DeformPoolGeometry& g, int64_t total, cudaStream_t stream);

}  // namespace dcnviz
