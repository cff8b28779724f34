// CPU kernels of deform_psroi_pool: MXNet's DeformablePSROIPooling (official.md §3.2), forward and
// backward, on the geometry of csrc/pooling.h that the CUDA kernels use too.
//
// Work is channel-major: one input plane (H*W values, a few KiB) is sampled by every RoI before the next
// plane, so the samples hit cache. RoI-major order (one output bin after another, as on the GPU) would
// pull a different plane for every bin and stream the whole input once per RoI.
//
// Within a plane, kLanes RoIs are handled side by side (lane_grids.h): each bin's sample positions
// (pooling.h's, lane by lane) become separable weights on a small window (BinWindow), built in vector
// loops over the lanes (AVX-512 or AVX2 where the CPU has it, picked at run time). The forward sums each lane's
// window, the backward spreads its gradient on it (separable_bin.h): the official sums regrouped, so the
// results differ from a sample-by-sample sum (the CUDA kernels) in rounding only, and are the same on
// every instruction set and with any number of threads.
//
// Robustness: a RoI whose batch index is outside [0, N) or not finite, or with a non-finite corner, is
// never used to index memory; its bins are 0 and it receives no gradient (the Python wrapper rejects
// such RoIs, but it cannot inspect values under torch.compile). Any other sample position, including
// one made NaN or infinite by the offsets, goes through dpsroi_axis, which skips it when it is off
// the map, so every read and write stays in bounds.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../pooling.h"
#include "../pooling_checks.h"
#include "lane_grids.h"
#include "reduced_precision.h"
#include "separable_bin.h"

namespace dcnviz {
namespace {

// The windows of every (bin, block of kLanes RoIs) (BinGrids::window; slopes: the backward's, with
// offsets). Where a sample grid serves several channels (shared: an offset class of several channels,
// as in no_trans mode, which the kernels read channel by channel), each window is computed once per call
// into a table (~2.6 KB each, 2.4 MB at the R-FCN head); otherwise just before use.
template <typename T>
class BinWindows {
 public:
  static constexpr int64_t kMaxTableBytes = int64_t(64) << 20;

  BinWindows(const BinGrids<T>& grids, const DeformPoolGeometry& g, bool shared, bool slopes)
      : grids_(grids), slopes_(slopes) {
    const int64_t size = grids.grids() * grids.blocks();
    if (!shared || g.channels_each_class == 1 || size * int64_t(sizeof(BinWindow<T>)) > kMaxTableBytes) return;
    table_.resize(size);
    at::parallel_for(0, size, 16, [&](int64_t begin, int64_t end) {
      ClassOffsets<T> offsets = grids.class_offsets();
      for (int64_t k = begin; k < end; ++k)
        grids.window(grids.grid_bin(k / grids.blocks()), k % grids.blocks(), slopes, offsets, table_[k]);
    });
  }

  // The window of `bin` for `block` (computed into `own` without a table).
  const BinWindow<T>& get(const ChannelBin& bin, int64_t block, ClassOffsets<T>& offsets, BinWindow<T>& own) const {
    if (!table_.empty()) return table_[bin.grid * grids_.blocks() + block];
    grids_.window(bin, block, slopes_, offsets, own);
    return own;
  }

 private:
  const BinGrids<T>& grids_;
  bool slopes_;
  std::vector<BinWindow<T>> table_;
};

// One bin of the lanes of a block, lane l into out + l * stride: n channels from x, C per pixel (a
// plane: 1 and 1), each the mean of its samples summed separably (separable_bin.h), on the lane's window
// where it fits, else by SeparableBin (`large`, on the sample grid, filled only then); 0 for a lane
// without samples (an unusable RoI or a bin off the map).
template <typename T>
void pool_bin(const BinGrids<T>& grids, const ChannelBin& bin, int64_t block, const BinWindow<T>& w, int64_t lanes,
              const T* x, int64_t C, int64_t n, const DeformPoolGeometry& g, ClassOffsets<T>& offsets,
              LaneGrids<T>& scratch, SeparableBin<T>& large, T* out, int64_t stride) {
  const LaneKernels<T>& kernels = lane_kernels<T>();
  if (C == 1) {
    kernels.window_means(w, lanes, g.width, x, out, stride);
    // Most blocks have every lane done by window_means; skipping the lane loop below for them (GCC kept
    // its output pointer on the stack) took ~5 % off the class-score forward's CPU time.
    bool rest = false;  // a lane that window_means left alone
    for (int64_t l = 0; l < lanes; ++l) rest |= (w.count[l] == 0) | !w.fits[l];
    if (!rest) return;
  }
  bool filled = false;  // the grid, for the lanes that do not fit
  LaneGrid<T> q{};
  for (int64_t l = 0; l < lanes; ++l) {
    T* o = out + l * stride;
    const int64_t count = w.count[l];
    if (count == 0) {
      std::fill_n(o, n, T(0));
    } else if (!w.fits[l]) {
      if (!filled) q = grids.get(bin, block, offsets, scratch, 0), filled = true;
      large.set(q, l);
      large.sum(x, C, n, o);
      for (int64_t k = 0; k < n; ++k) o[k] /= T(count);
    } else if (C != 1) {
      kernels.window_sum_cl(w, l, g.width, C, x + w.batch[l] + (w.row0[l] * g.width + w.col0[l]) * C, n, o);
      for (int64_t k = 0; k < n; ++k) o[k] /= T(count);
    }
  }
}

// Work items are (channel, block of kLanes RoIs) pairs, channel-major, so that a thread's range covers
// whole planes.
//
// In: T, or bfloat16 for a float T: then input and output are bfloat16, and a thread widens each channel's
// planes (every image's, a few KiB each) into float32 just before it samples them, and rounds each
// bin as it stores it: the float32 kernel's bits, rounded once, with no float32 copy of the map (38 MB
// at the R-FCN head, ~8 ms to make).
template <typename T, typename In>
void forward_kernel(const In* input, const T* rois, const T* offset, In* output, const DeformPoolGeometry& g) {
  constexpr bool kWiden = !std::is_same_v<T, In>;
  const std::vector<RoiFrame<T>> frames = roi_frames(rois, g);
  const int64_t P = g.pooled_size, plane = g.height * g.width, roi_stride = g.output_dim * P * P;
  const BinGrids<T> bin_grids(frames, offset, g, kWiden ? plane : g.channels * plane);
  const BinWindows<T> windows(bin_grids, g, true, false);
  const int64_t blocks = bin_grids.blocks();
  at::parallel_for(0, g.channels * blocks, 4, [&](int64_t begin, int64_t end) {
    std::vector<ChannelBin> bins;
    LaneGrids<T> scratch = bin_grids.scratch(1);
    ClassOffsets<T> offsets = bin_grids.class_offsets();
    BinWindow<T> own;
    SeparableBin<T> large(g.sample_per_part, g.width);
    std::vector<T> planes(kWiden ? g.batch * plane : 0);  // the channel's planes, image after image
    T means[kLanes];
    int64_t binned = -1;  // the channel whose bins `bins` (and `planes`) hold
    for (int64_t item = begin; item < end; ++item) {
      const int64_t channel = item / blocks, block = item % blocks, n0 = block * kLanes;
      const int64_t lanes = std::min(kLanes, g.rois - n0);
      if (channel != binned) {
        channel_bins<T>(channel, g, bins), binned = channel;
        if constexpr (kWiden)
          for (int64_t b = 0; b < g.batch; ++b)
            widen_bf16(input + (b * g.channels + channel) * plane, planes.data() + b * plane, plane);
      }
      if (channel + 1 < g.channels) prefetch_slice(input, g, channel + 1, block, blocks);
      for (const ChannelBin& bin : bins) {
        const BinWindow<T>& w = windows.get(bin, block, offsets, own);
        In* out = output + n0 * roi_stride + bin.out;
        if constexpr (kWiden) {
          pool_bin(bin_grids, bin, block, w, lanes, planes.data(), 1, 1, g, offsets, scratch, large, means, 1);
          for (int64_t l = 0; l < lanes; ++l) out[l * roi_stride] = c10::BFloat16(means[l]);
        } else {
          pool_bin(bin_grids, bin, block, w, lanes, input + channel * plane, 1, 1, g, offsets, scratch, large, out,
                   roi_stride);
        }
      }
    }
  });
}

// group_size 1 on a channels-last input (the paper's deformable RoI pooling, and the pooled features of
// the R-FCN head's offset branches): all channels of an offset class share each bin's samples, so one
// bin's weights serve a contiguous run of channels, a vector loop over the class's channels. The output
// is bin-major in memory, (P, P, R, C), so that those runs are written in place too (and the head's
// per-bin GEMMs read it as it is). Work items are (offset class, bin, block of kLanes RoIs); each output
// element is written by one item and bitwise equal to forward_kernel's (window_sum_cl, SeparableBin).
//
// Out: T, or bfloat16 for a float T: each item's sums go through a float32 buffer of its own and are
// rounded as they are stored, where a float32 output (60 MB at the R-FCN head) and a rounding pass over
// it took ~8 ms of a bfloat16 forward.
template <typename T, typename Out>
void forward_kernel_channels_last(const T* input, const T* rois, const T* offset, Out* output,
                                  const DeformPoolGeometry& g) {
  constexpr bool kRound = !std::is_same_v<T, Out>;
  const std::vector<RoiFrame<T>> frames = roi_frames(rois, g);
  const int64_t P = g.pooled_size, bins = P * P, each = g.channels_each_class;
  const BinGrids<T> bin_grids(frames, offset, g);
  const BinWindows<T> windows(bin_grids, g, false, false);
  const int64_t blocks = bin_grids.blocks();
  at::parallel_for(0, g.num_classes * bins * blocks, 1, [&](int64_t begin, int64_t end) {
    LaneGrids<T> scratch = bin_grids.scratch(1);
    ClassOffsets<T> offsets = bin_grids.class_offsets();
    BinWindow<T> own;
    SeparableBin<T> large(g.sample_per_part, g.width);
    std::vector<T> sums(kRound ? kLanes * each : 0);  // lane l's channels at l * each
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item % blocks, bin = item / blocks % bins, cls = item / (blocks * bins);
      const int64_t ph = bin / P, pw = bin % P, first = cls * each, n0 = block * kLanes;
      const int64_t lanes = std::min(kLanes, g.rois - n0);
      const ChannelBin cb{ph, pw, 0, cls * bins + bin, bin_cell<T>(first, ph, pw, g)};
      const BinWindow<T>& w = windows.get(cb, block, offsets, own);
      Out* out = output + (bin * g.rois + n0) * g.output_dim + first;
      if constexpr (kRound) {
        pool_bin(bin_grids, cb, block, w, lanes, input + first, g.channels, each, g, offsets, scratch, large,
                 sums.data(), each);
        for (int64_t l = 0; l < lanes; ++l) round_bf16(sums.data() + l * each, out + l * g.output_dim, each);
      } else {
        pool_bin(bin_grids, cb, block, w, lanes, input + first, g.channels, each, g, offsets, scratch, large, out,
                 g.output_dim);
      }
    }
  });
}

// Input gradient: each bin spreads grad/count over the pixels its samples touch, as the outer product of
// its row and column weights (separable_bin.h): on a window of kWindow x kWindow pixels computed for
// kLanes RoIs at once (BinWindow), or with SeparableBin for a bin too large for the window. Split by
// input channel: only the bins of one (ctop, gh, gw) touch a plane, so threads never write the same
// element, and each element sums its terms in a fixed order (RoI, bin) whatever the threads.
//
// Offset gradient: the slope of each sample's bilinear value along x and y, times trans_std * roi size *
// grad/count, summed over the bin. Several bins (every ctop of an offset class, every bin of a part
// cell) can share an offset cell across channels, so each bin's term goes to `terms` here, and
// reduce_offset_grad sums them per cell in a fixed order.
//
// `grad` and `terms` are bin-major, (output_dim * P * P, R) and (output_dim * P * P, R, 2), so that the
// lanes of a block read and write one run of memory rather than a cache line per RoI.
//
// grad_input and terms come uninitialised: a thread zeroes the planes of its channels just before it
// accumulates into them (in cache, and in parallel, where a separate zero fill of the whole gradient
// was a serial pass over 38-76 MB), and writes every terms slot of its bins.
//
// kOffset: with offsets (then `terms` is written), a compile-time flag so that the no_trans loop carries
// no slope code.
template <typename T, bool kOffset>
void backward_kernel(const T* grad, const T* input, const T* rois, const T* offset, T* grad_input, T* terms,
                     const DeformPoolGeometry& g) {
  const std::vector<RoiFrame<T>> frames = roi_frames(rois, g);
  const int64_t P = g.pooled_size, plane = g.height * g.width;
  const int64_t S = g.sample_per_part, W = g.width;
  const T trans_std = static_cast<T>(g.trans_std);
  const LaneKernels<T>& kernels = lane_kernels<T>();
  const BinGrids<T> bin_grids(frames, offset, g);
  const BinWindows<T> bin_windows(bin_grids, g, true, kOffset);
  const int64_t blocks = bin_grids.blocks();
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<ChannelBin> bins;
    LaneGrids<T> scratch = bin_grids.scratch(P * P);
    ClassOffsets<T> offsets = bin_grids.class_offsets();
    std::vector<LaneGrid<T>> grids(P * P);  // bin j's grid, filled only where a lane does not fit
    std::vector<BinWindow<T>> own(P * P);
    std::vector<const BinWindow<T>*> windows(P * P);
    std::vector<T> diff(P * P * kLanes);  // grad/count of bin j of lane l at j*kLanes + l (0 past the last RoI)
    std::vector<char> fits(P * P * kLanes);  // the lane fits its window and grad/count is finite
    std::vector<T> large_slopes(P * P * kLanes * 2);  // add_slopes' dv/dx, dv/dy where a lane does not fit
    SeparableBin<T> large(S, W);
    for (int64_t channel = begin; channel < end; ++channel) {
      channel_bins<T>(channel, g, bins);
      for (int64_t b = 0; b < g.batch; ++b) std::fill_n(grad_input + (b * g.channels + channel) * plane, plane, T(0));
      const T* x = input + channel * plane;
      T* gx = grad_input + channel * plane;
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t n0 = block * kLanes, lanes = std::min(kLanes, g.rois - n0);
        if (channel + 1 < end) prefetch_slice(input, g, channel + 1, block, blocks);
        for (size_t j = 0; j < bins.size(); ++j) {
          const BinWindow<T>& w = *(windows[j] = &bin_windows.get(bins[j], block, offsets, own[j]));
          T* d = diff.data() + j * kLanes;
          char* fit = fits.data() + j * kLanes;
          bool all_fit = true;
          for (int64_t l = 0; l < kLanes; ++l) {  // a bin without samples adds nothing
            d[l] = l < lanes && w.count[l] > 0 ? grad[bins[j].out * g.rois + n0 + l] / T(w.count[l]) : T(0);
            fit[l] = w.fits[l] && d[l] - d[l] == T(0);
            all_fit &= fit[l] || w.count[l] == 0;
          }
          if (all_fit) continue;
          grids[j] = bin_grids.get(bins[j], block, offsets, scratch, j);
          if constexpr (kOffset) {
            T* dv = large_slopes.data() + j * 2 * kLanes;
            std::fill_n(dv, 2 * kLanes, T(0));
            kernels.add_slopes(grids[j], x, S, dv, dv + kLanes);
          }
        }
        for (int64_t l = 0; l < lanes; ++l)
          for (size_t j = 0; j < bins.size(); ++j) {
            const BinWindow<T>& w = *windows[j];
            const int64_t index = bins[j].out * g.rois + n0 + l;
            const T d = diff[j * kLanes + l];
            T dv[2] = {T(0), T(0)};  // dv/dx, dv/dy
            const bool sampled = w.count[l] > 0;  // else an unusable RoI or a bin without samples: no gradient
            if (sampled && fits[j * kLanes + l]) {
              const int64_t at = w.batch[l] + w.row0[l] * W + w.col0[l];
              kernels.window_backward(w, l, W, d, x + at, gx + at, kOffset ? dv : nullptr);
            } else if (sampled) {
              large.set(grids[j], l);
              large.scatter(d, gx);
              dv[0] = large_slopes[j * 2 * kLanes + l], dv[1] = large_slopes[(j * 2 + 1) * kLanes + l];
            }
            if constexpr (kOffset) {
              const RoiFrame<T>& f = frames[n0 + l];
              terms[2 * index] = sampled ? dv[0] * trans_std * d * f.width : T(0);
              terms[2 * index + 1] = sampled ? dv[1] * trans_std * d * f.height : T(0);
            }
          }
      }
    }
  });
}

// Sums the bin-major terms into the offset cells (grad_offset comes uninitialised). Work items are
// (offset class, cell), which own disjoint outputs, so that one class (a class-agnostic bbox branch) still
// spreads over the threads: each sums the runs of R*2 terms of the bins that move its cell, in the order
// (ctop, ph, pw), then writes them out.
template <typename T>
void reduce_offset_grad(const T* terms, T* grad_offset, const DeformPoolGeometry& g) {
  const int64_t P = g.pooled_size, R = g.rois, cells = g.part_size * g.part_size;
  const int64_t class_bins = g.channels_each_class * P * P, per_roi = g.num_classes * 2 * cells;
  // The bins of class 0 that move each cell, in order; class c's are the same plus c * class_bins.
  std::vector<std::vector<int64_t>> cell_bins(cells);
  for (int64_t i = 0; i < class_bins; ++i)
    cell_bins[bin_cell<T>(i / (P * P), i / P % P, i % P, g).offset].push_back(i);
  at::parallel_for(0, g.num_classes * cells, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(R * 2);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t cls = item / cells, cell = item % cells;
      std::fill(acc.begin(), acc.end(), T(0));
      for (const int64_t i : cell_bins[cell]) {
        const T* __restrict t = terms + (cls * class_bins + i) * R * 2;
        T* __restrict a = acc.data();
        for (int64_t e = 0; e < R * 2; ++e) a[e] += t[e];
      }
      for (int64_t n = 0; n < R; ++n) {
        T* out = grad_offset + n * per_roi + cls * 2 * cells + cell;
        out[0] = acc[n * 2];
        out[cells] = acc[n * 2 + 1];
      }
    }
  });
}

// bfloat16 computes in float32 as float16 does (reduced_precision.h), but on the map itself: the
// kernels widen the planes they read (the class-score map) or round the features they write (the
// offset branches'), the two copies that were ~16 ms of a bfloat16 R-FCN forward. RoIs and offsets are
// upcast (small).
at::Tensor deform_psroi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                         const std::optional<at::Tensor>& offset, double spatial_scale,
                                         int64_t output_dim, int64_t group_size, int64_t pooled_size,
                                         int64_t part_size, int64_t sample_per_part, double trans_std) {
  const DeformPoolGeometry g = check_deform_psroi_pool(input, rois, offset, spatial_scale, output_dim, group_size,
                                                       pooled_size, part_size, sample_per_part, trans_std);
  const bool bf16 = input.scalar_type() == at::kBFloat16;
  if (reduced_precision(input) && !bf16)
    return deform_psroi_pool_forward_cpu(upcast(input), upcast(rois), upcast(offset), spatial_scale, output_dim,
                                         group_size, pooled_size, part_size, sample_per_part, trans_std)
        .to(input.scalar_type());
  const bool bin_major = group_size == 1 && !input.is_contiguous() && input.is_contiguous(at::MemoryFormat::ChannelsLast);
  auto output = bin_major ? at::empty({pooled_size, pooled_size, g.rois, output_dim}, input.options()).permute({2, 3, 0, 1})
                          : at::empty({g.rois, output_dim, pooled_size, pooled_size}, input.options());
  if (output.numel() == 0) return output;
  const auto r = bf16 ? upcast(rois).contiguous() : rois.contiguous();
  const auto t = !g.has_offset ? at::Tensor() : bf16 ? upcast(*offset).contiguous() : offset->contiguous();
  if (bf16) {
    const float* offsets = g.has_offset ? t.data_ptr<float>() : nullptr;
    if (bin_major)
      forward_kernel_channels_last<float>(upcast(input).data_ptr<float>(), r.data_ptr<float>(), offsets,
                                          output.data_ptr<c10::BFloat16>(), g);
    else
      forward_kernel<float>(input.contiguous().data_ptr<c10::BFloat16>(), r.data_ptr<float>(), offsets,
                            output.data_ptr<c10::BFloat16>(), g);
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_psroi_pool_forward_cpu", [&] {
    const scalar_t* offsets = g.has_offset ? t.data_ptr<scalar_t>() : nullptr;
    if (bin_major)
      forward_kernel_channels_last<scalar_t>(input.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), offsets,
                                             output.data_ptr<scalar_t>(), g);
    else
      forward_kernel<scalar_t>(input.contiguous().data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), offsets,
                               output.data_ptr<scalar_t>(), g);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> deform_psroi_pool_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
    const std::optional<at::Tensor>& offset, double spatial_scale, int64_t output_dim, int64_t group_size,
    int64_t pooled_size, int64_t part_size, int64_t sample_per_part, double trans_std) {
  const DeformPoolGeometry g = check_deform_psroi_pool(input, rois, offset, spatial_scale, output_dim, group_size,
                                                       pooled_size, part_size, sample_per_part, trans_std);
  check_pool_grad_output(grad_output, input, g, "deform_psroi_pool");
  if (reduced_precision(input)) {
    auto [gi, go] = deform_psroi_pool_backward_cpu(upcast(grad_output), upcast(input), upcast(rois), upcast(offset),
                                                   spatial_scale, output_dim, group_size, pooled_size, part_size,
                                                   sample_per_part, trans_std);
    return {gi.to(input.scalar_type()), go.to(input.scalar_type())};
  }
  if (grad_output.numel() == 0 || input.numel() == 0) {
    return {at::zeros_like(input, at::MemoryFormat::Contiguous),
            g.has_offset ? at::zeros_like(*offset, at::MemoryFormat::Contiguous) : at::empty({0}, input.options())};
  }
  // Uninitialised: the kernels write every element (see backward_kernel).
  auto grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  auto grad_offset = g.has_offset ? at::empty_like(*offset, at::MemoryFormat::Contiguous)
                                  : at::empty({0}, input.options());
  auto terms = g.has_offset ? at::empty({output_dim * pooled_size * pooled_size, g.rois, 2}, input.options())
                            : at::Tensor();
  const auto dy = grad_output.reshape({g.rois, -1}).t().contiguous();  // bin-major (see backward_kernel)
  const auto x = input.contiguous(), r = rois.contiguous();
  const auto t = g.has_offset ? offset->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_psroi_pool_backward_cpu", [&] {
    if (g.has_offset) {
      backward_kernel<scalar_t, true>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                      t.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(),
                                      terms.data_ptr<scalar_t>(), g);
      reduce_offset_grad<scalar_t>(terms.data_ptr<scalar_t>(), grad_offset.data_ptr<scalar_t>(), g);
    } else {
      backward_kernel<scalar_t, false>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
                                       nullptr, grad_input.data_ptr<scalar_t>(), nullptr, g);
    }
  });
  return {grad_input, grad_offset};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnviz, CPU, m) {
  m.impl("deform_psroi_pool", &deform_psroi_pool_forward_cpu);
  m.impl("_deform_psroi_pool_backward", &deform_psroi_pool_backward_cpu);
}

}  // namespace dcnviz
