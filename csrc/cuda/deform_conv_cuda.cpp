// deform_conv2d on CUDA: argument checks, allocation, dtype dispatch and the cuBLAS GEMMs around the
// sampling kernels of deform_conv_kernels.cu (see there for the layouts and the precision rules).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../conv_checks.h"
#include "kernels.h"

namespace dcnviz {
namespace {

// Images per chunk, as on the CPU: a GEMM inner size of a few thousand, columns under ~256 MiB.
int64_t chunk_size(const ConvGeometry& g, int64_t elem_size) {
  const int64_t want = std::max<int64_t>(1, 8192 / g.P());
  const int64_t per_image = std::max<int64_t>(1, g.C * g.K() * g.P() * elem_size);
  const int64_t fit = std::max<int64_t>(1, (int64_t(256) << 20) / per_image);
  return std::max<int64_t>(1, std::min({g.N, want, fit}));
}

// Rows [g*Fg, (g+1)*Fg) of a (B, F, Ho, Wo) block of a batch tensor as an (Fg, B*P) matrix (a view
// when B == 1).
at::Tensor group_rows(const at::Tensor& t, int64_t n0, int64_t B, int64_t gi, const ConvGeometry& g) {
  return t.narrow(0, n0, B).narrow(1, gi * g.Fg(), g.Fg()).transpose(0, 1).reshape({g.Fg(), B * g.P()});
}

// weight (F, C/G, kh, kw) -> (G, F/G, K*C/G), tap-major like the columns.
at::Tensor tap_major(const at::Tensor& weight, const ConvGeometry& g) {
  return weight.reshape({g.G, g.Fg(), g.Cg(), g.K()}).transpose(2, 3).reshape({g.G, g.Fg(), g.K() * g.Cg()});
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input, const at::Tensor& offset_, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                              int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const ConvGeometry g = check_deform_conv2d(input, offset_, weight, sh, sw, ph, pw, dh, dw, groups, dgroups);
  // The GEMMs run in the op's own dtype even inside an autocast region (autocast would lower them).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor output = at::zeros({g.N, g.F, g.Ho, g.Wo}, input.options());
  const int64_t K = g.K(), P = g.P(), CgK = g.Cg() * K;
  if (output.numel() > 0 && CgK > 0) {
    const at::Tensor offset = offset_.contiguous(), x_cl = input.permute({0, 2, 3, 1}).contiguous();
    const at::Tensor w = tap_major(weight, g);
    const int64_t B = chunk_size(g, x_cl.element_size());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor columns = at::empty({g.G * B * P * CgK}, x_cl.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_cl.scalar_type(), "deform_conv2d_cuda", [&] {
      for (int64_t n0 = 0; n0 < g.N; n0 += B) {
        const int64_t nb = std::min(B, g.N - n0);
        const at::Tensor cols = columns.narrow(0, 0, g.G * nb * P * CgK).view({g.G, nb * P, CgK});
        launch_deform_im2col(x_cl.data_ptr<scalar_t>() + n0 * g.H * g.W * g.C,
                             offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P, g, nb, columns.data_ptr<scalar_t>(),
                             stream);
        for (int64_t gi = 0; gi < g.G; ++gi) {
          if (nb == 1) {  // the group's rows of one image are contiguous: the GEMM writes them in place
            at::Tensor out = output[n0].view({g.F, P}).narrow(0, gi * g.Fg(), g.Fg());
            at::mm_out(out, w[gi], cols[gi].t());
          } else {
            output.narrow(0, n0, nb).narrow(1, gi * g.Fg(), g.Fg()).copy_(
                at::mm(w[gi], cols[gi].t()).view({g.Fg(), nb, g.Ho, g.Wo}).transpose(0, 1));
          }
        }
      }
    });
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.F && bias->dtype() == input.dtype() &&
                    bias->device() == input.device(),
                "deform_conv2d: bias must have shape (F,) and the input's dtype and device");
    output.add_(bias->view({1, g.F, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output_, const at::Tensor& input, const at::Tensor& offset_, const at::Tensor& weight,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, int64_t dgroups) {
  const ConvGeometry g = check_deform_conv2d(input, offset_, weight, sh, sw, ph, pw, dh, dw, groups, dgroups);
  // The GEMMs run in the op's own dtype even inside an autocast region (autocast would lower them).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  TORCH_CHECK(grad_output_.dim() == 4 && grad_output_.size(0) == g.N && grad_output_.size(1) == g.F &&
                  grad_output_.size(2) == g.Ho && grad_output_.size(3) == g.Wo,
              "deform_conv2d backward: grad_output must have shape (N, F, Ho, Wo)");
  TORCH_CHECK(grad_output_.dtype() == input.dtype() && grad_output_.device() == input.device(),
              "deform_conv2d backward: grad_output must have the input's dtype and device");
  at::globalContext().alertNotDeterministic("deform_conv2d_backward_cuda");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor grad_output = grad_output_.contiguous(), offset = offset_.contiguous();
  const at::Tensor x_cl = input.permute({0, 2, 3, 1}).contiguous();
  const int64_t K = g.K(), P = g.P(), CgK = g.Cg() * K;
  // Input and weight gradients accumulate in float32 for half types (the input one through atomics).
  const auto acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor grad_x_cl = at::zeros(x_cl.sizes(), x_cl.options().dtype(acc_type));
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_w = at::zeros({g.G, g.Fg(), CgK}, weight.options().dtype(acc_type));  // tap-major
  at::Tensor grad_bias = grad_output.sum({0, 2, 3}, /*keepdim=*/false, acc_type).to(input.scalar_type());
  if (grad_output.numel() > 0 && CgK > 0) {
    const int64_t B = chunk_size(g, x_cl.element_size());
    const at::Tensor w = tap_major(weight, g);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor columns = at::empty({g.G * B * P * CgK}, x_cl.options());
    // The column gradient overwrites the columns in place, except for half types, where it gets a float32
    // buffer of its own so that col2im and the offset gradient read it unrounded.
    const bool same = acc_type == x_cl.scalar_type();
    at::Tensor grad_columns = same ? columns : at::empty({g.G * B * P * CgK}, x_cl.options().dtype(acc_type));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_cl.scalar_type(), "deform_conv2d_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      for (int64_t n0 = 0; n0 < g.N; n0 += B) {
        const int64_t nb = std::min(B, g.N - n0);
        const scalar_t* x = x_cl.data_ptr<scalar_t>() + n0 * g.H * g.W * g.C;
        const scalar_t* off = offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P;
        const at::Tensor cols = columns.narrow(0, 0, g.G * nb * P * CgK).view({g.G, nb * P, CgK});
        launch_deform_im2col(x, off, g, nb, columns.data_ptr<scalar_t>(), stream);
        const at::Tensor gcols = grad_columns.narrow(0, 0, g.G * nb * P * CgK).view({g.G, nb * P, CgK});
        for (int64_t gi = 0; gi < g.G; ++gi) {
          const at::Tensor gout = group_rows(grad_output, n0, nb, gi, g);
          // Then grad_columns = grad_out^T @ W (in place of the columns when the dtypes agree: they are
          // no longer needed once the weight gradient has read them).
          at::Tensor gcol = gcols[gi];
          if (same) {
            grad_w[gi].addmm_(gout, cols[gi]);
            at::mm_out(gcol, gout.t(), w[gi]);
          } else {
            grad_w[gi].add_(at::mm(gout, cols[gi], acc_type));
            at::mm_out(gcol, gout.t(), w[gi], acc_type);
          }
        }
        const acc_t* gcol = grad_columns.data_ptr<acc_t>();
        launch_deform_col2im(gcol, off, g, nb, grad_x_cl.data_ptr<acc_t>() + n0 * g.H * g.W * g.C, stream);
        launch_deform_offset_grad(gcol, x, off, g, nb, grad_offset.data_ptr<scalar_t>() + n0 * 2 * g.DG * K * P,
                                  stream);
      }
    });
  }
  at::Tensor grad_input =
      grad_x_cl.permute({0, 3, 1, 2}).to(input.scalar_type(), false, false, at::MemoryFormat::Contiguous);
  at::Tensor grad_weight = grad_w.view({g.F, g.kh, g.kw, g.Cg()}).permute({0, 3, 1, 2})
                               .to(weight.scalar_type(), false, false, at::MemoryFormat::Contiguous);
  return {grad_input, grad_offset, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace dcnviz
