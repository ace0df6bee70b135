// GraphSampler: captures a Python callable (the guided sampling loop of dawm_fast.sampling) into
// a CUDA graph once per key and input signature, and afterwards only replays it, so a batch
// costs one graph launch instead of N U-Net forwards and N updates driven from Python. It knows
// nothing of sampling: the loop, its step function and its constants are the caller's.
#pragma once

#include <ATen/core/Tensor.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace dawm_fast {

// True when this build has CUDA graph support.
bool built_with_cuda();

class GraphSampler {
 public:
  explicit GraphSampler(int64_t max_graphs = 4);
  ~GraphSampler();
  GraphSampler(const GraphSampler&) = delete;
  GraphSampler& operator=(const GraphSampler&) = delete;

  // run(*inputs) -> Tensor, on CUDA tensors of one device. The first call for a key (the
  // caller's key plus every input's shape, dtype and device) captures `run` on static copies of
  // the inputs; every call refills them and replays. `key` must name everything `run` bakes
  // into the graph (its constants, which network it calls).
  at::Tensor replay(const pybind11::object& run, const std::vector<at::Tensor>& inputs,
                    const std::string& key);

  // Keys of the cached graphs, most recently used first.
  std::vector<std::string> graph_keys();
  int64_t max_graphs() const { return max_graphs_; }
  // Drop every cached graph (their memory pools go back to the caching allocator).
  void clear();

 private:
  struct Graph;  // one captured call with its static buffers; defined in graph_sampler.cpp

  int64_t max_graphs_;
  // LRU cache, front = most recently used. At most max_graphs_ entries.
  std::list<std::pair<std::string, std::unique_ptr<Graph>>> graphs_;
  std::mutex mutex_;
};

}  // namespace dawm_fast
