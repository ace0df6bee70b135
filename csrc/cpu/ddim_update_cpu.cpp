// CPU kernels of dawm_fast::ddim_guided_update and dawm_fast::condition_noise: one pass over the
// window, parallel over windows with at::parallel_for.
//
// Exactness: every product and sum below is a separate float32 operation, in the order of
// DDIMScheduler.step, so the result matches the unfused PyTorch reference bit for bit. That needs
// the compiler not to contract a * b + c into an FMA; the build passes -ffp-contract=off for this.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../ops.h"

namespace dawm_fast {
namespace ops {
namespace {

// Enough elements per task that the parallel_for overhead stays small next to the work.
constexpr int64_t kGrainElements = 32768;

int64_t grain_rows(const WindowDims& d) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, d.T * d.C));
}

template <bool kClip, bool kNoise>
void ddim_rows(const float* eps2, Eps2Strides es, const float* x, const float* s0,
               const float* a0, const float* noise, float* out, const WindowDims& d,
               const DdimStepCoefs& k, int64_t b_begin, int64_t b_end) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    for (int64_t step = 0; step < d.T; ++step) {
      const int64_t base = (b * d.T + step) * d.C;
      const float* ec_row = eps2 + b * es.row + step * es.step;
      const float* eu_row = eps2 + (b + d.B) * es.row + step * es.step;
      for (int64_t c = 0; c < d.C; ++c) {
        float v;
        if (conditioned(d, b, step, c, s0, a0, &v)) {
          // Overwritten by the conditioning in the reference too, so the update is skipped.
          out[base + c] = v;
          continue;
        }
        const float xv = x[base + c];
        const float t_c = k.w_cond * ec_row[c * es.channel];
        const float t_u = k.w_uncond * eu_row[c * es.channel];
        float eps = t_c + t_u;
        const float x_a = k.sqrt_recip_alpha * xv;
        const float e_a = k.sqrt_recipm1_alpha * eps;
        float x0 = x_a - e_a;
        if (kClip) {
          x0 = clamp_like_torch(x0, -k.clip, k.clip);
          // Re-derive eps from the clipped x0 so x_prev stays on the x0 / x_t line.
          const float sx0 = k.sqrt_alpha * x0;
          const float diff = xv - sx0;
          eps = diff * k.recip_sqrt_one_minus_alpha;
        }
        const float p_x0 = k.sqrt_alpha_prev * x0;
        const float p_eps = k.dir_coef * eps;
        float prev = p_x0 + p_eps;
        if (kNoise) {
          const float scaled = k.noise_scale * noise[base + c];
          const float sn = k.sigma * scaled;
          prev = prev + sn;
        }
        out[base + c] = prev;
      }
    }
  }
}

at::Tensor ddim_guided_update_cpu(const at::Tensor& eps2, const at::Tensor& x,
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
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {
    return out;
  }
  const Eps2Strides es = detail::eps2_strides(eps2);
  const float* pe = eps2.const_data_ptr<float>();
  const float* px = x.const_data_ptr<float>();
  const float* ps = s0.const_data_ptr<float>();
  const float* pa = a0.const_data_ptr<float>();
  const float* pn = noise.has_value() ? noise->const_data_ptr<float>() : nullptr;
  float* po = out.mutable_data_ptr<float>();
  const bool has_noise = pn != nullptr;
  at::parallel_for(0, d.B, grain_rows(d), [&](int64_t begin, int64_t end) {
    if (k.clip_sample && has_noise) {
      ddim_rows<true, true>(pe, es, px, ps, pa, pn, po, d, k, begin, end);
    } else if (k.clip_sample) {
      ddim_rows<true, false>(pe, es, px, ps, pa, pn, po, d, k, begin, end);
    } else if (has_noise) {
      ddim_rows<false, true>(pe, es, px, ps, pa, pn, po, d, k, begin, end);
    } else {
      ddim_rows<false, false>(pe, es, px, ps, pa, pn, po, d, k, begin, end);
    }
  });
  return out;
}

at::Tensor condition_noise_cpu(const at::Tensor& z, const at::Tensor& s0, const at::Tensor& a0,
                               double scale) {
  const WindowDims d = detail::check_condition_noise(z, s0, a0);
  at::Tensor out = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {
    return out;
  }
  const float sc = static_cast<float>(scale);
  const float* pz = z.const_data_ptr<float>();
  const float* ps = s0.const_data_ptr<float>();
  const float* pa = a0.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  at::parallel_for(0, d.B, grain_rows(d), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t step = 0; step < d.T; ++step) {
        const int64_t base = (b * d.T + step) * d.C;
        for (int64_t c = 0; c < d.C; ++c) {
          float v;
          po[base + c] = conditioned(d, b, step, c, ps, pa, &v) ? v : sc * pz[base + c];
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dawm_fast, CPU, m) {
  m.impl("ddim_guided_update", &ddim_guided_update_cpu);
  m.impl("condition_noise", &condition_noise_cpu);
}

}  // namespace ops
}  // namespace dawm_fast
