// CUDA registrations of dawm_fast::ddim_guided_update and dawm_fast::condition_noise: check the
// tensors, allocate the output and launch the raw kernels (ddim_update_kernel.cu) on the current
// stream, so the ops are stream-ordered like any ATen op and can be captured in a CUDA graph.
// Compiled only when torch has CUDA and a CUDA toolkit is found (DAWM_FAST_WITH_CUDA). Only c10's
// CUDA headers are used (not ATen/cuda/CUDAContext.h), so a toolkit without the cuBLAS/cuSPARSE
// development headers suffices.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops.h"
#include "ddim_update_kernel.h"

namespace dawm_fast {
namespace ops {
namespace {

at::Tensor ddim_guided_update_cuda(const at::Tensor& eps2, const at::Tensor& x,
                                   const at::Tensor& s0, const at::Tensor& a0,
                                   const std::optional<at::Tensor>& noise, double w,
                                   double sqrt_recip_alpha, double sqrt_recipm1_alpha,
                                   double sqrt_alpha, double recip_sqrt_one_minus_alpha,
                                   double sqrt_alpha_prev, double dir_coef, double sigma,
                                   std::optional<double> clip, double noise_scale) {
  const WindowDims d = detail::check_ddim_guided_update(eps2, x, s0, a0, noise, clip);
  const DdimStepCoefs k =
      detail::step_coefs(w, sqrt_recip_alpha, sqrt_recipm1_alpha, sqrt_alpha,
                         recip_sqrt_one_minus_alpha, sqrt_alpha_prev, dir_coef, sigma, clip,
                         noise_scale);
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::launch_ddim_guided_update(
      eps2.const_data_ptr<float>(), detail::eps2_strides(eps2), x.const_data_ptr<float>(),
      s0.const_data_ptr<float>(), a0.const_data_ptr<float>(),
      noise.has_value() ? noise->const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(),
      d, k, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return out;
}

at::Tensor condition_noise_cuda(const at::Tensor& z, const at::Tensor& s0, const at::Tensor& a0,
                                double scale) {
  const WindowDims d = detail::check_condition_noise(z, s0, a0);
  const c10::cuda::CUDAGuard device_guard(z.device());
  at::Tensor out = at::empty_like(z, at::MemoryFormat::Contiguous);
  C10_CUDA_CHECK(cuda::launch_condition_noise(
      z.const_data_ptr<float>(), s0.const_data_ptr<float>(), a0.const_data_ptr<float>(),
      out.mutable_data_ptr<float>(), d, static_cast<float>(scale),
      c10::cuda::getCurrentCUDAStream(z.device().index()).stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dawm_fast, CUDA, m) {
  m.impl("ddim_guided_update", &ddim_guided_update_cuda);
  m.impl("condition_noise", &condition_noise_cuda);
}

}  // namespace ops
}  // namespace dawm_fast
