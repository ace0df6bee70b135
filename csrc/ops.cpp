// Operator schemas of the dawm_fast library and the argument checks of the CPU kernels. One
// implementation per device: CPU in C++ (cpu/), CUDA the Triton kernels of dawm_fast.kernels,
// registered from Python with the ops' autograd (dawm_fast/ops/registrations.py).
//
// ddim_guided_update, per element of the window x [B, T, C] (channels [s, a, r]), in exactly the
// operation order of DDIMScheduler.step plus the sampling loop's guidance and conditioning:
//   eps  = w * eps2[b] + (1 - w) * eps2[B + b]         (rows [0, B) conditional, [B, 2B) not)
//   x0   = sqrt_recip_alpha * x - sqrt_recipm1_alpha * eps
//   if clip:  x0 = clamp(x0, -clip, clip)
//             eps = (x - sqrt_alpha * x0) * recip_sqrt_one_minus_alpha
//   prev = sqrt_alpha_prev * x0 + dir_coef * eps
//   if noise: prev = prev + sigma * (noise_scale * noise)
// then step 0's state and action channels <- s0, a0 and every later step's action channels <- 0.
// The coefficients are DDIMScheduler.step_coefficients(i) as floats; clip is its `clip` (None when
// clipping is off). noise is the raw draw, scaled here by noise_scale (the sampling temperature),
// which rounds exactly like the reference's `temperature * randn(...)`.

#include "ops.h"
#include "text.h"

#include <torch/library.h>

#include <string>
#include <vector>

namespace dawm_fast {
namespace ops {
namespace detail {
namespace {


// dtype and device of one tensor argument.
void check_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on the same device as x (",
              x.device(), "), got ", t.device());
}

void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name,
              " must be contiguous (call .contiguous() on it), got strides ",
              shape_str(t.strides()));
}

WindowDims check_window(const char* op, const char* x_name, const at::Tensor& x,
                        const at::Tensor& s0, const at::Tensor& a0) {
  TORCH_CHECK(x.defined(), op, ": ", x_name, " is an undefined tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": ", x_name, " must be float32, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 3, op, ": ", x_name, " must be a [B, T, C] window, got shape ",
              shape_str(x.sizes()));
  check_contiguous(op, x_name, x);
  check_tensor(op, "s0", s0, x);
  check_tensor(op, "a0", a0, x);
  const int64_t b = x.size(0);
  TORCH_CHECK(s0.dim() == 2 && s0.size(0) == b, op, ": s0 must be [B, obs_dim] with B = ",
              num(b), " (", x_name, ".size(0)), got shape ", shape_str(s0.sizes()));
  TORCH_CHECK(a0.dim() == 2 && a0.size(0) == b, op, ": a0 must be [B, act_dim] with B = ",
              num(b), " (", x_name, ".size(0)), got shape ", shape_str(a0.sizes()));
  check_contiguous(op, "s0", s0);
  check_contiguous(op, "a0", a0);
  const int64_t c = x.size(2);
  TORCH_CHECK(s0.size(1) + a0.size(1) + 1 == c, op,
              ": the window layout [s, a, r] needs obs_dim + act_dim + 1 == C; s0 gives obs_dim = ",
              num(s0.size(1)), ", a0 gives act_dim = ", num(a0.size(1)), ", ", x_name, " has C = ",
              num(c));
  return WindowDims{b, x.size(1), c, s0.size(1), a0.size(1)};
}

}  // namespace

WindowDims check_ddim_guided_update(const at::Tensor& eps2, const at::Tensor& x,
                                    const at::Tensor& s0, const at::Tensor& a0,
                                    const std::optional<at::Tensor>& noise,
                                    std::optional<double> clip) {
  constexpr const char* op = "ddim_guided_update";
  const WindowDims d = check_window(op, "x", x, s0, a0);
  check_tensor(op, "eps2", eps2, x);
  // eps2 may have any strides (see Eps2Strides); only its shape is fixed.
  TORCH_CHECK(eps2.dim() == 3 && eps2.size(0) == 2 * d.B && eps2.size(1) == d.T &&
                  eps2.size(2) == d.C,
              op, ": eps2 must be [2B, T, C] = ", shape_str({2 * d.B, d.T, d.C}),
              " (conditional rows first, then unconditional), got shape ",
              shape_str(eps2.sizes()));
  if (noise.has_value()) {
    check_tensor(op, "noise", *noise, x);
    TORCH_CHECK(noise->sizes() == x.sizes(), op, ": noise must have x's shape ",
                shape_str(x.sizes()), ", got ", shape_str(noise->sizes()));
    check_contiguous(op, "noise", *noise);
  }
  if (clip.has_value()) {
    TORCH_CHECK(*clip >= 0.0, op, ": clip must be >= 0 (x0 is clamped to [-clip, clip]), got ",
                num(*clip));
  }
  return d;
}

WindowDims check_condition_noise(const at::Tensor& z, const at::Tensor& s0,
                                 const at::Tensor& a0) {
  return check_window("condition_noise", "z", z, s0, a0);
}

Eps2Strides eps2_strides(const at::Tensor& eps2) {
  return Eps2Strides{eps2.stride(0), eps2.stride(1), eps2.stride(2)};
}

DdimStepCoefs step_coefs(double w, double sqrt_recip_alpha, double sqrt_recipm1_alpha,
                         double sqrt_alpha, double recip_sqrt_one_minus_alpha,
                         double sqrt_alpha_prev, double dir_coef, double sigma,
                         std::optional<double> clip, double noise_scale) {
  return make_ddim_step_coefs(w, sqrt_recip_alpha, sqrt_recipm1_alpha, sqrt_alpha,
                              recip_sqrt_one_minus_alpha, sqrt_alpha_prev, dir_coef, sigma,
                              clip.has_value(), clip.value_or(0.0), noise_scale);
}

}  // namespace detail

TORCH_LIBRARY(dawm_fast, m) {
  m.def(
      "ddim_guided_update(Tensor eps2, Tensor x, Tensor s0, Tensor a0, Tensor? noise, float w, "
      "float sqrt_recip_alpha, float sqrt_recipm1_alpha, float sqrt_alpha, "
      "float recip_sqrt_one_minus_alpha, float sqrt_alpha_prev, float dir_coef, float sigma, "
      "float? clip=None, float noise_scale=1.0) -> Tensor");
  m.def("condition_noise(Tensor z, Tensor s0, Tensor a0, float scale=1.0) -> Tensor");
  // y = Mish(GroupNorm(conv_out + bias[:, None])) [+ emb_add[:, :, None]] [+ residual]: the
  // fused Conv1dBlock epilogue (CPU kernel in cpu/groupnorm_mish_cpu.cpp, fp32 inference).
  m.def(
      "groupnorm_mish(Tensor conv_out, Tensor bias, Tensor gamma, Tensor beta, int num_groups, "
      "float eps, Tensor? emb_add, Tensor? residual) -> Tensor");
  // Its backward without the adds' (plain) grads: (d conv_out, d bias, d gamma, d beta), group
  // statistics recomputed from conv_out. CUDA only (the CPU trains through the reference).
  m.def(
      "groupnorm_mish_backward(Tensor grad_out, Tensor conv_out, Tensor bias, Tensor gamma, "
      "Tensor beta, int num_groups, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace ops
}  // namespace dawm_fast
