// GraphSampler (see graph_sampler.h) and the Python module dawm_fast._C that exposes it.
//
// CUDA graphs: one graph holds one whole call of `run` (for sampling: the initial conditioning,
// N forwards, N fused updates) for one key. Inputs live in static buffers allocated before
// capture; a replay copies the new inputs into them, launches the graph on the caller's stream
// and clones the static output.
//
// Memory: every graph gets its own private memory pool. A pool shared across graphs would save
// memory only while all of them stay alive, and an evicted graph's blocks could not be returned
// until every graph sharing the pool is gone; with one pool per graph, evicting a graph (LRU, at
// most max_graphs) hands its whole pool back to the caching allocator.

#include <torch/csrc/utils/pybind.h>

#include "graph_sampler.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/GradMode.h>
#include <pybind11/stl.h>

#include <string>

#include "text.h"

#ifdef DAWM_FAST_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace py = pybind11;

namespace dawm_fast {
namespace {

constexpr const char* kReplay = "GraphSampler.replay";

// Every input a defined CUDA tensor on the first one's device; returns the graph key.
std::string check_inputs(const std::vector<at::Tensor>& inputs, const std::string& key) {
  TORCH_CHECK(!inputs.empty(), kReplay, ": needs at least one input tensor");
  std::string k = key;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& t = inputs[i];
    TORCH_CHECK(t.defined(), kReplay, ": inputs[", num(i), "] is an undefined tensor");
    TORCH_CHECK(t.is_cuda(), kReplay, ": CUDA graphs need CUDA tensors; inputs[", num(i),
                "] is on ", t.device());
    TORCH_CHECK(t.device() == inputs[0].device(), kReplay, ": inputs[", num(i), "] is on ",
                t.device(), ", inputs[0] on ", inputs[0].device());
    k += " | " + shape_str(t.sizes()) + " " + c10::toString(t.scalar_type()) + " " +
         t.device().str();
  }
  return k;
}

at::Tensor as_output(const py::object& result) {
  try {
    return result.cast<at::Tensor>();
  } catch (const py::cast_error&) {
    TORCH_CHECK(false, kReplay, ": run must return a Tensor, got ",
                std::string(py::str(py::type::of(result))));
  }
}

py::tuple as_args(const std::vector<at::Tensor>& tensors) {
  py::tuple args(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    args[i] = py::cast(tensors[i]);
  }
  return args;
}

// Lock `mutex` without holding the GIL while waiting: the holder may be inside `run` (Python)
// and need the GIL to finish.
std::unique_lock<std::mutex> lock_releasing_gil(std::mutex& mutex) {
  std::unique_lock<std::mutex> lock(mutex, std::defer_lock);
  if (PyGILState_Check()) {
    py::gil_scoped_release no_gil;
    lock.lock();
  } else {
    lock.lock();
  }
  return lock;
}

}  // namespace

bool built_with_cuda() {
#ifdef DAWM_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

#ifdef DAWM_FAST_WITH_CUDA

struct GraphSampler::Graph {
  // Declared first so it is destroyed last: the static tensors below live in its memory pool.
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  std::vector<at::Tensor> inputs;         // static inputs, refilled before every replay
  at::Tensor out;                         // static output, written by every replay
  c10::cuda::CUDAStream home_stream;      // the stream the static inputs were allocated on

  explicit Graph(c10::cuda::CUDAStream stream) : home_stream(stream) {}

  // A replay on another stream reads the static inputs there: tell the caching allocator, so
  // their memory is not handed out again while such a replay may still run after an eviction.
  void record_use(const c10::cuda::CUDAStream& stream) {
    if (stream == home_stream) {
      return;
    }
    for (at::Tensor& t : inputs) {
      t.record_stream(stream);
    }
  }
};

namespace {

// After a failure inside the capture: end it so the stream and the caching allocator leave
// capture mode (the partial graph is discarded with its CUDAGraph), and clear the non-sticky
// error cudaStreamEndCapture reports for an invalidated capture.
void abandon_capture(at::cuda::CUDAGraph& graph) {
  try {
    graph.capture_end();
  } catch (const std::exception&) {
  }
  (void)cudaGetLastError();
}

}  // namespace

at::Tensor GraphSampler::replay(const py::object& run, const std::vector<at::Tensor>& inputs,
                                const std::string& key) {
  TORCH_CHECK(PyCallable_Check(run.ptr()), kReplay, ": run must be callable as run(*inputs)");
  const std::string full_key = check_inputs(inputs, key);
  // Inference only; the thread-local mode also covers the Python `run`.
  const c10::NoGradGuard no_grad;
  const c10::cuda::CUDAGuard device_guard(inputs[0].device());
  auto lock = lock_releasing_gil(mutex_);

  Graph* g = nullptr;
  for (auto it = graphs_.begin(); it != graphs_.end(); ++it) {
    if (it->first == full_key) {
      graphs_.splice(graphs_.begin(), graphs_, it);  // mark most recently used
      g = graphs_.front().second.get();
      break;
    }
  }

  if (g == nullptr) {
    // Evict first. An evicted graph's private pool goes back to the caching allocator, which
    // frees it at its next cache release (empty_cache, or an allocation that would not fit).
    while (static_cast<int64_t>(graphs_.size()) >= max_graphs_) {
      graphs_.pop_back();
    }
    const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream();
    auto entry = std::make_unique<Graph>(caller);
    // Static inputs are ordinary allocations made outside the capture, so replays can refill them.
    for (const at::Tensor& t : inputs) {
      entry->inputs.push_back(t.clone(at::MemoryFormat::Contiguous));
    }
    const py::tuple args = as_args(entry->inputs);
    // Capture needs a non-default stream; a side stream also keeps the warm-up out of the
    // caller's stream. It must first see the static inputs the caller's stream is writing.
    const c10::cuda::CUDAStream side =
        c10::cuda::getStreamFromPool(false, inputs[0].device().index());
    c10::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(caller);
    inputs_ready.block(side);
    {
      const c10::cuda::CUDAStreamGuard stream_guard(side);
      // Warm-up: one eager run, so every first-use cost (cuBLAS/cuDNN handles and workspaces,
      // Triton compilation and module loading, lazy allocations) happens outside the capture,
      // where it would be illegal or recorded.
      as_output(run(*args));
      // As torch.cuda.graph does: nothing queued before the capture is still running when the
      // allocator starts recording, and warm-up errors surface here rather than in the capture.
      c10::cuda::device_synchronize();
      entry->graph = std::make_unique<at::cuda::CUDAGraph>();
      entry->graph->capture_begin();  // default pool id: a private pool for this graph
      try {
        entry->out = as_output(run(*args));
      } catch (...) {
        abandon_capture(*entry->graph);
        throw;
      }
      entry->graph->capture_end();
    }
    c10::cuda::CUDAEvent captured;
    captured.record(side);
    captured.block(caller);
    graphs_.emplace_front(full_key, std::move(entry));
    g = graphs_.front().second.get();
  }

  // Replay on the caller's stream: refill the static inputs, launch, hand out a copy of the
  // static output (the next replay overwrites it).
  g->record_use(c10::cuda::getCurrentCUDAStream());
  for (size_t i = 0; i < inputs.size(); ++i) {
    g->inputs[i].copy_(inputs[i]);
  }
  g->graph->replay();
  return g->out.clone();
}

#else  // CPU-only build: no graphs can be captured, so no Graph ever exists.

struct GraphSampler::Graph {};

at::Tensor GraphSampler::replay(const py::object&, const std::vector<at::Tensor>& inputs,
                                const std::string& key) {
  check_inputs(inputs, key);
  TORCH_CHECK(false, kReplay, ": needs dawm_fast._C built with CUDA; this build is CPU-only "
              "(torch without CUDA, or no CUDA toolkit found when it was built)");
}

#endif  // DAWM_FAST_WITH_CUDA

GraphSampler::GraphSampler(int64_t max_graphs) : max_graphs_(max_graphs) {
  TORCH_CHECK_VALUE(max_graphs >= 1, "GraphSampler: max_graphs must be >= 1, got ",
                    num(max_graphs));
}

GraphSampler::~GraphSampler() = default;

std::vector<std::string> GraphSampler::graph_keys() {
  auto lock = lock_releasing_gil(mutex_);
  std::vector<std::string> keys;
  keys.reserve(graphs_.size());
  for (const auto& entry : graphs_) {
    keys.push_back(entry.first);
  }
  return keys;
}

void GraphSampler::clear() {
  auto lock = lock_releasing_gil(mutex_);
  graphs_.clear();
}

}  // namespace dawm_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dawm_fast C++ extension: the ops torch.ops.dawm_fast.* (CPU kernels) and "
            "GraphSampler, CUDA graph capture and replay of the guided sampling loop.";
  m.def("with_cuda", &dawm_fast::built_with_cuda,
        "True when the extension was built with CUDA graph support.");
  py::class_<dawm_fast::GraphSampler>(m, "GraphSampler", R"doc(
Captures ``run(*inputs)`` into a CUDA graph on first use for each key (with the inputs' shapes,
dtypes and device) and replays it afterwards; at most ``max_graphs`` graphs are kept (least
recently used evicted first). A captured graph reads every tensor ``run`` used (parameters,
cached matrices) at its address at capture time: call ``clear()`` after moving or re-creating
them, and refresh cached values in place before a replay.
)doc")
      .def(py::init<int64_t>(), py::arg("max_graphs") = 4)
      .def("replay", &dawm_fast::GraphSampler::replay, py::arg("run"), py::arg("inputs"),
           py::arg("key"), R"doc(
run(*inputs) -> Tensor, captured on the first call for a key and replayed on the others.
inputs: CUDA tensors of one device; key: everything run bakes into the graph besides the inputs'
shapes, dtypes and device (e.g. its constants).
)doc")
      .def("graph_keys", &dawm_fast::GraphSampler::graph_keys,
           "Keys of the cached CUDA graphs, most recently used first.")
      .def("clear", &dawm_fast::GraphSampler::clear, "Drop every cached CUDA graph.")
      .def_property_readonly("max_graphs", &dawm_fast::GraphSampler::max_graphs)
      .def("__len__", [](dawm_fast::GraphSampler& self) { return self.graph_keys().size(); });
}
