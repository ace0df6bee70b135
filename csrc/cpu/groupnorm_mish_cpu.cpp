// CPU kernel of dawm_fast::groupnorm_mish, the fused Conv1dBlock epilogue of the temporal U-Net:
//   y = Mish(GroupNorm(conv_out + bias[:, None])) [+ emb_add[:, :, None]] [+ residual]
// (kernels/groupnorm_mish.py's groupnorm_mish_reference in plain PyTorch). One task per
// (sample, group): a group is one contiguous [C/G, T] span of conv_out [B, C, T], small enough to
// stay in L1 while it is read once and rewritten in place in the output.
//
// Statistics are fp32 two-pass (mean, then mean of squared deviations), like torch's GroupNorm up
// to summation order. Mish uses mish(z) = z * n / (n + 2) with n = e(e + 2), e = exp(z), which has
// no cancellation for very negative z, and mish(z) = z for z > 20. exp is a Cephes-style
// range-reduced polynomial (~1 ulp) written as plain float code so that gcc -O3 vectorizes the
// element loop (libm's expf would keep it scalar; -fno-trapping-math lets gcc if-convert it).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../text.h"

namespace dawm_fast {
namespace ops {
namespace {

constexpr const char* kOp = "groupnorm_mish";
// Elements per parallel task: enough that at::parallel_for's overhead stays small.
constexpr int64_t kGrainElements = 16384;

void check_float_cpu_contig(const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), kOp, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, kOp, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), kOp, ": ", name,
              " must be contiguous (call .contiguous() on it), got strides ",
              shape_str(t.strides()));
}

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// Mish of one value, branch-free so the caller's loop vectorizes. exp(z) for z clamped to
// [-87, 20]: z = k ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-7 (Cephes expf) polynomial,
// 2^k built in the exponent bits.
inline float mish_scalar(float z) {
  const float zc = std::min(std::max(z, -87.0f), 20.0f);
  constexpr float kMagic = 12582912.0f;                    // 1.5 * 2^23: round to nearest int
  const float t = zc * 1.44269504088896341f + kMagic;
  const float kf = t - kMagic;
  const int32_t k = float_to_bits(t) - float_to_bits(kMagic);
  float r = zc - kf * 0.693359375f;                       // ln2 split into hi + lo
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float r2 = r * r;
  p = p * r2;
  p = p + r;
  p = p + 1.0f;
  const float e = p * bits_to_float((k + 127) << 23);
  const float n = e * (e + 2.0f);
  const float m = z * n / (n + 2.0f);
  return z > 20.0f ? z : m;
}

// The element loop of Mish, in place. With -fno-trapping-math (set in the build flags) gcc
// vectorizes it; target_clones adds an AVX2 version picked at load time where the CPU has it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DAWM_FAST_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DAWM_FAST_CLONES
#endif

DAWM_FAST_CLONES void mish_inplace(float* v, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {
    v[i] = mish_scalar(v[i]);
  }
}

// Sum of v[0, len) with 8 independent accumulators (vectorizable without -ffast-math).
inline float sum8(const float* v, int64_t len, float shift) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    for (int j = 0; j < 8; ++j) {
      acc[j] += v[i + j] - shift;
    }
  }
  float tail = 0.f;
  for (; i < len; ++i) {
    tail += v[i] - shift;
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

inline float sumsq8(const float* v, int64_t len, float mean) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float d = v[i + j] - mean;
      acc[j] += d * d;
    }
  }
  float tail = 0.f;
  for (; i < len; ++i) {
    const float d = v[i] - mean;
    tail += d * d;
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

struct Dims {
  int64_t B, C, T, G, CPG;
};

template <bool kEmb, bool kRes>
void groups(const float* x, const float* bias, const float* gamma, const float* beta,
            const float* emb, const float* res, float* out, const Dims& d, float eps,
            int64_t begin, int64_t end) {
  const int64_t span = d.CPG * d.T;
  const float inv_n = 1.0f / static_cast<float>(span);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / d.G;
    const int64_t c0 = (task % d.G) * d.CPG;
    const int64_t base = (b * d.C + c0) * d.T;
    const float* xg = x + base;
    float* og = out + base;
    // h = conv_out + bias, written to the output (the group's working buffer).
    for (int64_t c = 0; c < d.CPG; ++c) {
      const float bc = bias[c0 + c];
      const float* xr = xg + c * d.T;
      float* orow = og + c * d.T;
      for (int64_t t = 0; t < d.T; ++t) {
        orow[t] = xr[t] + bc;
      }
    }
    const float mean = sum8(og, span, 0.0f) * inv_n;
    const float var = sumsq8(og, span, mean) * inv_n;
    const float rstd = 1.0f / std::sqrt(var + eps);
    // z = (h - mean) * rstd * gamma + beta = h * scale + shift (torch's CPU GroupNorm form).
    for (int64_t c = 0; c < d.CPG; ++c) {
      const float scale = rstd * gamma[c0 + c];
      const float shift = beta[c0 + c] - scale * mean;
      float* orow = og + c * d.T;
      for (int64_t t = 0; t < d.T; ++t) {
        orow[t] = orow[t] * scale + shift;
      }
    }
    mish_inplace(og, span);
    if (kEmb) {
      const float* eg = emb + b * d.C + c0;
      for (int64_t c = 0; c < d.CPG; ++c) {
        const float ec = eg[c];
        float* orow = og + c * d.T;
        for (int64_t t = 0; t < d.T; ++t) {
          orow[t] = orow[t] + ec;
        }
      }
    }
    if (kRes) {
      const float* rg = res + base;
      for (int64_t i = 0; i < span; ++i) {
        og[i] = og[i] + rg[i];
      }
    }
  }
}

at::Tensor groupnorm_mish_cpu(const at::Tensor& conv_out, const at::Tensor& bias,
                              const at::Tensor& gamma, const at::Tensor& beta, int64_t num_groups,
                              double eps, const std::optional<at::Tensor>& emb_add,
                              const std::optional<at::Tensor>& residual) {
  check_float_cpu_contig("conv_out", conv_out);
  TORCH_CHECK(conv_out.dim() == 3, kOp, ": conv_out must be [B, C, T], got shape ",
              shape_str(conv_out.sizes()));
  const int64_t B = conv_out.size(0), C = conv_out.size(1), T = conv_out.size(2);
  TORCH_CHECK(num_groups > 0, kOp, ": num_groups must be positive, got ", num(num_groups));
  TORCH_CHECK(C % num_groups == 0, kOp, ": channels C = ", num(C),
              " (conv_out.size(1)) must be divisible by num_groups = ", num(num_groups));
  TORCH_CHECK(eps >= 0.0, kOp, ": eps must be >= 0, got ", num(eps));
  const char* vec_names[3] = {"bias", "gamma", "beta"};
  const at::Tensor* vecs[3] = {&bias, &gamma, &beta};
  for (int i = 0; i < 3; ++i) {
    check_float_cpu_contig(vec_names[i], *vecs[i]);
    TORCH_CHECK(vecs[i]->dim() == 1 && vecs[i]->size(0) == C, kOp, ": ", vec_names[i],
                " must be [C] with C = ", num(C), " (conv_out.size(1)), got shape ",
                shape_str(vecs[i]->sizes()));
  }
  if (emb_add.has_value()) {
    check_float_cpu_contig("emb_add", *emb_add);
    TORCH_CHECK(emb_add->dim() == 2 && emb_add->size(0) == B && emb_add->size(1) == C, kOp,
                ": emb_add must be [B, C] = ", shape_str({B, C}), ", got shape ",
                shape_str(emb_add->sizes()));
  }
  if (residual.has_value()) {
    check_float_cpu_contig("residual", *residual);
    TORCH_CHECK(residual->sizes() == conv_out.sizes(), kOp,
                ": residual must have conv_out's shape ", shape_str(conv_out.sizes()), ", got ",
                shape_str(residual->sizes()));
  }
  at::Tensor out = at::empty_like(conv_out, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {
    return out;
  }
  const Dims d{B, C, T, num_groups, C / num_groups};
  const float* px = conv_out.const_data_ptr<float>();
  const float* pb = bias.const_data_ptr<float>();
  const float* pg = gamma.const_data_ptr<float>();
  const float* pbe = beta.const_data_ptr<float>();
  const float* pe = emb_add.has_value() ? emb_add->const_data_ptr<float>() : nullptr;
  const float* pr = residual.has_value() ? residual->const_data_ptr<float>() : nullptr;
  float* po = out.mutable_data_ptr<float>();
  const float feps = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (d.CPG * d.T));
  at::parallel_for(0, B * num_groups, grain, [&](int64_t begin, int64_t end) {
    if (pe && pr) {
      groups<true, true>(px, pb, pg, pbe, pe, pr, po, d, feps, begin, end);
    } else if (pe) {
      groups<true, false>(px, pb, pg, pbe, pe, pr, po, d, feps, begin, end);
    } else if (pr) {
      groups<false, true>(px, pb, pg, pbe, pe, pr, po, d, feps, begin, end);
    } else {
      groups<false, false>(px, pb, pg, pbe, pe, pr, po, d, feps, begin, end);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dawm_fast, CPU, m) {
  m.impl("groupnorm_mish", &groupnorm_mish_cpu);
}

}  // namespace ops
}  // namespace dawm_fast
