// Plain parameter structs of the CPU DDIM kernels (csrc/cpu/ddim_update_cpu.cpp). No torch
// headers: plain C++ that any kernel (a CUDA one included) can share.
#pragma once

#include <cstdint>

namespace dawm_fast {

// Window layout x [B, T, C] with C = O + A + 1: channels [s (O), a (A), r (1)].
struct WindowDims {
  int64_t B;  // windows
  int64_t T;  // steps per window (horizon)
  int64_t C;  // channels per step
  int64_t O;  // obs_dim: state channels [0, O)
  int64_t A;  // act_dim: action channels [O, O + A)
};

// The conditioning rule and the NaN-propagating clamp, callable from host and device code.
#if defined(__CUDACC__)
#define DAWM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DAWM_HOST_DEVICE inline
#endif

// torch.clamp propagates NaN; a plain min/max would not (v != v is true only for NaN).
DAWM_HOST_DEVICE float clamp_like_torch(float v, float lo, float hi) {
  return v != v ? v : (v < lo ? lo : (v > hi ? hi : v));
}

// Where the conditioning writes element (b, step, c): stores its value and returns true; returns
// false where the element keeps the computed value.
DAWM_HOST_DEVICE bool conditioned(const WindowDims& d, int64_t b, int64_t step, int64_t c,
                                  const float* s0, const float* a0, float* value) {
  if (step == 0 && c < d.O) {
    *value = s0[b * d.O + c];
    return true;
  }
  if (c >= d.O && c < d.O + d.A) {
    *value = step == 0 ? a0[b * d.A + (c - d.O)] : 0.0f;
    return true;
  }
  return false;
}


// Strides (in elements) of eps2 [2B, T, C]. eps2 may be a non-contiguous view (the reference
// U-Net returns a transpose), so the kernels index it by stride instead of forcing a copy.
struct Eps2Strides {
  int64_t row;
  int64_t step;
  int64_t channel;
};

// One guided DDIM step's constants, already rounded to float32. PyTorch rounds a Python float to
// the tensor's dtype before multiplying, so the fused kernels must use float32 constants too to
// reproduce DDIMScheduler.step bit for bit.
struct DdimStepCoefs {
  float w_cond;                      // w
  float w_uncond;                    // 1 - w, computed in double first like Python's (1.0 - w)
  float sqrt_recip_alpha;            // 1 / sqrt(alpha_t)
  float sqrt_recipm1_alpha;          // sqrt(1 - alpha_t) / sqrt(alpha_t)
  float sqrt_alpha;                  // sqrt(alpha_t)
  float recip_sqrt_one_minus_alpha;  // 1 / sqrt(1 - alpha_t)
  float sqrt_alpha_prev;             // sqrt(alpha_prev)
  float dir_coef;                    // sqrt(1 - alpha_prev - sigma^2)
  float sigma;                       // eta noise scale
  float noise_scale;                 // temperature applied to the raw noise before sigma
  float clip;                        // x0 bound; used only when clip_sample
  bool clip_sample;
};

inline DdimStepCoefs make_ddim_step_coefs(double w, double sqrt_recip_alpha,
                                          double sqrt_recipm1_alpha, double sqrt_alpha,
                                          double recip_sqrt_one_minus_alpha,
                                          double sqrt_alpha_prev, double dir_coef, double sigma,
                                          bool clip_sample, double clip, double noise_scale) {
  DdimStepCoefs k;
  k.w_cond = static_cast<float>(w);
  k.w_uncond = static_cast<float>(1.0 - w);
  k.sqrt_recip_alpha = static_cast<float>(sqrt_recip_alpha);
  k.sqrt_recipm1_alpha = static_cast<float>(sqrt_recipm1_alpha);
  k.sqrt_alpha = static_cast<float>(sqrt_alpha);
  k.recip_sqrt_one_minus_alpha = static_cast<float>(recip_sqrt_one_minus_alpha);
  k.sqrt_alpha_prev = static_cast<float>(sqrt_alpha_prev);
  k.dir_coef = static_cast<float>(dir_coef);
  k.sigma = static_cast<float>(sigma);
  k.noise_scale = static_cast<float>(noise_scale);
  k.clip = static_cast<float>(clip);
  k.clip_sample = clip_sample;
  return k;
}

}  // namespace dawm_fast
