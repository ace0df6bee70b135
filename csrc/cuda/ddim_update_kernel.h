// Raw-pointer launchers of the CUDA kernels behind dawm_fast::ddim_guided_update and
// dawm_fast::condition_noise. No torch headers: ddim_update_kernel.cu compiles with nvcc alone;
// ddim_update_cuda.cpp is the torch glue that checks tensors and calls these on the current stream.
#pragma once

#include <cuda_runtime_api.h>

#include "../ddim_update_params.h"

namespace dawm_fast {
namespace cuda {

// out [B, T, C] = guided DDIM step of x [B, T, C] with eps2 [2B, T, C] (strided), then the
// conditioning write from s0 [B, O] and a0 [B, A]. noise [B, T, C] may be null (no eta noise).
// x, s0, a0, noise and out are contiguous float32 device pointers. Returns the launch status.
cudaError_t launch_ddim_guided_update(const float* eps2, Eps2Strides eps2_strides,
                                      const float* x, const float* s0, const float* a0,
                                      const float* noise, float* out, WindowDims dims,
                                      DdimStepCoefs coefs, cudaStream_t stream);

// out [B, T, C] = conditioning(scale * z).
cudaError_t launch_condition_noise(const float* z, const float* s0, const float* a0, float* out,
                                   WindowDims dims, float scale, cudaStream_t stream);

}  // namespace cuda
}  // namespace dawm_fast
