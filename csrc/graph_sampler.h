// GraphSampler: the whole guided DDIM sampling loop in C++, with the U-Net supplied as a Python
// callable. On CPU (or CUDA without graphs) the loop runs eagerly; on CUDA it is captured once per
// input signature into a CUDA graph and afterwards only replayed, so a batch costs one graph launch
// instead of N U-Net forwards driven from Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dawm_fast {

// The constants of one DDIM step, in DDIMScheduler.step_coefficients order (float64 as computed
// there; the kernels round them to float32 exactly where PyTorch would).
struct StepCoefs {
  double sqrt_recip_alpha;
  double sqrt_recipm1_alpha;
  double sqrt_alpha;
  double recip_sqrt_one_minus_alpha;
  double sqrt_alpha_prev;
  double dir_coef;
  double sigma;
};

// Everything the guided loop needs besides the tensors and the network.
struct LoopSpec {
  std::vector<int64_t> timesteps;  // the descending DDIM timesteps, one per step
  std::vector<StepCoefs> coefs;    // step_coefficients(i) for each step i
  std::optional<double> clip;      // x0 clip bound; nullopt when clip_sample is off
  double w = 1.0;                  // guidance weight: eps = w * eps_cond + (1 - w) * eps_uncond
  double temperature = 1.0;        // scales the initial noise and every eta noise draw
};

// The guided loop, exactly as the reference sampler runs it:
//   x = conditioning(temperature * noise)
//   for each step i: eps2 = forward([x; x], t_i, [g; g], [a0; a0], [1; 0])
//                    x = ddim_guided_update(eps2, x, ..., step_noise[i] if given)
// forward(x2 [2B, T, C], t2 [2B] long, returns2 [2B], actions2 [2B, A], mask2 [2B]) -> eps2.
// Called eagerly and, unchanged, under CUDA graph capture.
at::Tensor run_guided_loop(const pybind11::object& forward, const at::Tensor& s0,
                           const at::Tensor& a0, const at::Tensor& returns,
                           const at::Tensor& noise, const std::optional<at::Tensor>& step_noise,
                           const LoopSpec& spec);

// True when this build has the CUDA kernels and CUDA graph support.
bool built_with_cuda();

class GraphSampler {
 public:
  explicit GraphSampler(int64_t max_graphs = 4);
  ~GraphSampler();
  GraphSampler(const GraphSampler&) = delete;
  GraphSampler& operator=(const GraphSampler&) = delete;

  // Sample windows x [B, T, C]. s0 [B, O], a0 [B, A], returns [B], noise [B, T, C] (the raw
  // initial randn), step_noise [N, B, T, C] (the raw per-step randn, only when eta > 0), all
  // float32 on one device. use_cuda_graph: capture / replay a CUDA graph (CUDA tensors only).
  // tag: extra text for the graph key (e.g. which network `forward` runs).
  at::Tensor sample(const pybind11::object& forward, const at::Tensor& s0, const at::Tensor& a0,
                    const at::Tensor& returns, const at::Tensor& noise,
                    const std::optional<at::Tensor>& step_noise, const LoopSpec& spec,
                    bool use_cuda_graph, const std::string& tag);

  // Keys of the cached graphs, most recently used first.
  std::vector<std::string> graph_keys();
  int64_t max_graphs() const { return max_graphs_; }
  // Drop every cached graph (their memory pools go back to the caching allocator).
  void clear();

 private:
  struct Graph;  // one captured loop with its static buffers; defined in graph_sampler.cpp

  at::Tensor sample_graph(const pybind11::object& forward, const at::Tensor& s0,
                          const at::Tensor& a0, const at::Tensor& returns,
                          const at::Tensor& noise, const std::optional<at::Tensor>& step_noise,
                          const LoopSpec& spec, const std::string& tag);

  int64_t max_graphs_;
  // LRU cache, front = most recently used. At most max_graphs_ entries.
  std::list<std::pair<std::string, std::unique_ptr<Graph>>> graphs_;
  std::mutex mutex_;
};

}  // namespace dawm_fast
