// Argument checks the CPU kernels of torch.ops.dawm_fast.* run before touching memory (the
// schemas are in ops.cpp; Python calls the ops through the dispatcher).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "ddim_update_params.h"

namespace dawm_fast {
namespace ops {

namespace detail {

// Validate the arguments of ddim_guided_update and return the window dims; every failure names
// the offending argument.
WindowDims check_ddim_guided_update(const at::Tensor& eps2, const at::Tensor& x,
                                    const at::Tensor& s0, const at::Tensor& a0,
                                    const std::optional<at::Tensor>& noise,
                                    std::optional<double> clip);

WindowDims check_condition_noise(const at::Tensor& z, const at::Tensor& s0, const at::Tensor& a0);

Eps2Strides eps2_strides(const at::Tensor& eps2);

DdimStepCoefs step_coefs(double w, double sqrt_recip_alpha, double sqrt_recipm1_alpha,
                         double sqrt_alpha, double recip_sqrt_one_minus_alpha,
                         double sqrt_alpha_prev, double dir_coef, double sigma,
                         std::optional<double> clip, double noise_scale);

}  // namespace detail
}  // namespace ops
}  // namespace dawm_fast
