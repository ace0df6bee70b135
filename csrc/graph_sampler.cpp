// GraphSampler (see graph_sampler.h) and the Python module dawm_fast._C that exposes it.
//
// CUDA graphs: one graph holds the WHOLE loop (initial conditioning, N forwards, N fused updates)
// for one input signature. The key covers every shape, the device, whether eta noise is used and
// every scalar baked into the captured kernels (timesteps, step constants, w, temperature, clip),
// plus a caller tag. Inputs live in static buffers allocated before capture; a replay copies the
// new inputs into them, launches the graph on the caller's stream and clones the static output.
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

#include "ops.h"
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

constexpr const char* kSample = "GraphSampler.sample";

void check_input(const char* name, const at::Tensor& t, const at::Tensor& s0,
                 std::vector<int64_t> shape, const char* shape_doc) {
  TORCH_CHECK(t.defined(), kSample, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, kSample, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == s0.device(), kSample, ": ", name,
              " must be on the same device as s0 (", s0.device(), "), got ", t.device());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), kSample, ": ", name, " must be ", shape_doc,
              " = ", shape_str(shape), ", got ", shape_str(t.sizes()));
}

// Validates every argument of GraphSampler.sample against s0's batch and the window layout.
void check_sample_args(const at::Tensor& s0, const at::Tensor& a0, const at::Tensor& returns,
                       const at::Tensor& noise, const std::optional<at::Tensor>& step_noise,
                       const LoopSpec& spec) {
  TORCH_CHECK(s0.defined() && s0.dim() == 2, kSample, ": s0 must be a [B, obs_dim] tensor, got ",
              s0.defined() ? shape_str(s0.sizes()) : std::string("an undefined tensor"));
  TORCH_CHECK(s0.scalar_type() == at::kFloat, kSample, ": s0 must be float32, got ",
              s0.scalar_type());
  TORCH_CHECK(s0.size(0) >= 1, kSample, ": s0 must hold at least one window (B >= 1)");
  TORCH_CHECK(a0.defined() && a0.dim() == 2, kSample, ": a0 must be a [B, act_dim] tensor, got ",
              a0.defined() ? shape_str(a0.sizes()) : std::string("an undefined tensor"));
  const int64_t b = s0.size(0);
  const int64_t o = s0.size(1);
  const int64_t a = a0.size(1);
  const int64_t c = o + a + 1;
  check_input("a0", a0, s0, {b, a}, "[B, act_dim]");
  check_input("returns", returns, s0, {b}, "[B]");
  TORCH_CHECK(noise.defined() && noise.dim() == 3, kSample,
              ": noise must be a [B, T, C] tensor, got ",
              noise.defined() ? shape_str(noise.sizes()) : std::string("an undefined tensor"));
  const int64_t t = noise.size(1);
  TORCH_CHECK(t >= 1, kSample, ": noise must have T >= 1 steps, got shape ",
              shape_str(noise.sizes()));
  check_input("noise", noise, s0, {b, t, c}, "[B, T, obs_dim + act_dim + 1]");
  const int64_t n = static_cast<int64_t>(spec.timesteps.size());
  TORCH_CHECK(n >= 1, kSample, ": timesteps must list at least one DDIM step");
  TORCH_CHECK(static_cast<int64_t>(spec.coefs.size()) == n, kSample, ": coefs must have one entry"
              " per timestep (", num(n), "), got ", num(spec.coefs.size()));
  if (step_noise.has_value()) {
    check_input("step_noise", *step_noise, s0, {n, b, t, c}, "[N, B, T, C]");
  }
  if (spec.clip.has_value()) {
    TORCH_CHECK(*spec.clip >= 0.0, kSample, ": clip must be >= 0, got ", num(*spec.clip));
  }
}

at::Tensor as_eps2(const py::object& result, int64_t b, const at::Tensor& x) {
  at::Tensor eps2;
  try {
    eps2 = result.cast<at::Tensor>();
  } catch (const py::cast_error&) {
    TORCH_CHECK(false, kSample, ": forward must return a Tensor eps2 [2B, T, C], got ",
                std::string(py::str(py::type::of(result))));
  }
  TORCH_CHECK(eps2.sizes() == at::IntArrayRef({2 * b, x.size(1), x.size(2)}), kSample,
              ": forward must return eps2 [2B, T, C] = ",
              shape_str({2 * b, x.size(1), x.size(2)}), ", got ", shape_str(eps2.sizes()));
  TORCH_CHECK(eps2.scalar_type() == at::kFloat, kSample,
              ": forward must return a float32 eps2, got ", eps2.scalar_type());
  TORCH_CHECK(eps2.device() == x.device(), kSample, ": forward returned eps2 on ", eps2.device(),
              ", the windows are on ", x.device());
  return eps2;
}

// Lock `mutex` without holding the GIL while waiting: the holder may be inside `forward` (Python)
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

at::Tensor run_guided_loop(const py::object& forward, const at::Tensor& s0, const at::Tensor& a0,
                           const at::Tensor& returns, const at::Tensor& noise,
                           const std::optional<at::Tensor>& step_noise, const LoopSpec& spec) {
  const int64_t b = s0.size(0);
  at::Tensor x = ops::condition_noise(noise, s0, a0, spec.temperature);         // [B, T, C]
  // Rows [0, B) use the return, rows [B, 2B) drop it; the action embedding is kept in both.
  const at::Tensor returns2 = at::cat({returns, returns});                      // [2B]
  const at::Tensor actions2 = at::cat({a0, a0});                                // [2B, A]
  const at::Tensor mask2 =
      at::cat({at::ones({b}, s0.options()), at::zeros({b}, s0.options())});    // [2B]
  for (size_t i = 0; i < spec.timesteps.size(); ++i) {
    const at::Tensor t2 = at::full({2 * b}, spec.timesteps[i], s0.options().dtype(at::kLong));
    const at::Tensor x2 = at::cat({x, x});                                      // [2B, T, C]
    const py::object result = forward(x2, t2, returns2, actions2, mask2);
    const at::Tensor eps2 = as_eps2(result, b, x);                              // [2B, T, C]
    std::optional<at::Tensor> noise_i;
    if (step_noise.has_value()) {
      noise_i = step_noise->select(0, static_cast<int64_t>(i));                 // [B, T, C]
    }
    const StepCoefs& c = spec.coefs[i];
    x = ops::ddim_guided_update(eps2, x, s0, a0, noise_i, spec.w, c.sqrt_recip_alpha,
                                c.sqrt_recipm1_alpha, c.sqrt_alpha, c.recip_sqrt_one_minus_alpha,
                                c.sqrt_alpha_prev, c.dir_coef, c.sigma, spec.clip,
                                spec.temperature);
  }
  return x;
}

#ifdef DAWM_FAST_WITH_CUDA

struct GraphSampler::Graph {
  // Declared first so it is destroyed last: the static tensors below live in its memory pool.
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor s0;                          // static inputs, refilled before every replay
  at::Tensor a0;
  at::Tensor returns;
  at::Tensor noise;
  std::optional<at::Tensor> step_noise;
  at::Tensor out;                         // static output, written by every replay
  c10::cuda::CUDAStream home_stream;      // the stream the static inputs were allocated on

  explicit Graph(c10::cuda::CUDAStream stream) : home_stream(stream) {}

  // A replay on another stream reads the static inputs there: tell the caching allocator, so
  // their memory is not handed out again while such a replay may still run after an eviction.
  void record_use(const c10::cuda::CUDAStream& stream) {
    if (stream == home_stream) {
      return;
    }
    for (at::Tensor* t : {&s0, &a0, &returns, &noise}) {
      t->record_stream(stream);
    }
    if (step_noise.has_value()) {
      step_noise->record_stream(stream);
    }
  }
};

namespace {

// Everything that is baked into a captured graph, as text. Doubles are written as hexfloats so
// two keys are equal only when every constant is bit-identical.
std::string graph_key(const at::Tensor& s0, const at::Tensor& a0, const at::Tensor& noise,
                      bool has_step_noise, const LoopSpec& spec, const std::string& tag) {
  // Plain string building (text.h says why no ostream).
  std::string k = "B=" + num(s0.size(0)) + " T=" + num(noise.size(1)) +
                  " C=" + num(noise.size(2)) + " obs_dim=" + num(s0.size(1)) +
                  " act_dim=" + num(a0.size(1)) + " steps=" + num(spec.timesteps.size()) +
                  " dtype=" + c10::toString(s0.scalar_type()) + " device=" + s0.device().str() +
                  " eta_noise=" + (has_step_noise ? "1" : "0") + " tag=" + tag +
                  " w=" + hexfloat(spec.w) + " temperature=" + hexfloat(spec.temperature) +
                  " clip=" + (spec.clip.has_value() ? hexfloat(*spec.clip) : "none");
  for (size_t i = 0; i < spec.timesteps.size(); ++i) {
    const StepCoefs& c = spec.coefs[i];
    for (const double v : {static_cast<double>(spec.timesteps[i]), c.sqrt_recip_alpha,
                           c.sqrt_recipm1_alpha, c.sqrt_alpha, c.recip_sqrt_one_minus_alpha,
                           c.sqrt_alpha_prev, c.dir_coef, c.sigma}) {
      k += " " + hexfloat(v);
    }
    k += " |";
  }
  return k;
}

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

at::Tensor GraphSampler::sample_graph(const py::object& forward, const at::Tensor& s0,
                                      const at::Tensor& a0, const at::Tensor& returns,
                                      const at::Tensor& noise,
                                      const std::optional<at::Tensor>& step_noise,
                                      const LoopSpec& spec, const std::string& tag) {
  const c10::cuda::CUDAGuard device_guard(s0.device());
  const std::string key = graph_key(s0, a0, noise, step_noise.has_value(), spec, tag);
  auto lock = lock_releasing_gil(mutex_);

  Graph* g = nullptr;
  for (auto it = graphs_.begin(); it != graphs_.end(); ++it) {
    if (it->first == key) {
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
    entry->s0 = s0.clone(at::MemoryFormat::Contiguous);
    entry->a0 = a0.clone(at::MemoryFormat::Contiguous);
    entry->returns = returns.clone(at::MemoryFormat::Contiguous);
    entry->noise = noise.clone(at::MemoryFormat::Contiguous);
    if (step_noise.has_value()) {
      entry->step_noise = step_noise->clone(at::MemoryFormat::Contiguous);
    }
    // Capture needs a non-default stream; a side stream also keeps the warm-up out of the
    // caller's stream. It must first see the static inputs the caller's stream is writing.
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, s0.device().index());
    c10::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(caller);
    inputs_ready.block(side);
    {
      const c10::cuda::CUDAStreamGuard stream_guard(side);
      // Warm-up: one eager run, so every first-use cost (cuBLAS/cuDNN handles and workspaces,
      // Triton compilation and module loading, lazy allocations) happens outside the capture,
      // where it would be illegal or recorded.
      run_guided_loop(forward, entry->s0, entry->a0, entry->returns, entry->noise,
                      entry->step_noise, spec);
      // As torch.cuda.graph does: nothing queued before the capture is still running when the
      // allocator starts recording, and warm-up errors surface here rather than in the capture.
      c10::cuda::device_synchronize();
      entry->graph = std::make_unique<at::cuda::CUDAGraph>();
      entry->graph->capture_begin();  // default pool id: a private pool for this graph
      try {
        entry->out = run_guided_loop(forward, entry->s0, entry->a0, entry->returns, entry->noise,
                                     entry->step_noise, spec);
      } catch (...) {
        abandon_capture(*entry->graph);
        throw;
      }
      entry->graph->capture_end();
    }
    c10::cuda::CUDAEvent captured;
    captured.record(side);
    captured.block(caller);
    graphs_.emplace_front(key, std::move(entry));
    g = graphs_.front().second.get();
  }

  // Replay on the caller's stream: refill the static inputs, launch, hand out a copy of the
  // static output (the next replay overwrites it).
  g->record_use(c10::cuda::getCurrentCUDAStream());
  g->s0.copy_(s0);
  g->a0.copy_(a0);
  g->returns.copy_(returns);
  g->noise.copy_(noise);
  if (step_noise.has_value()) {
    g->step_noise->copy_(*step_noise);
  }
  g->graph->replay();
  return g->out.clone();
}

#else  // CPU-only build: no graphs can be captured, so no Graph ever exists.

struct GraphSampler::Graph {};

at::Tensor GraphSampler::sample_graph(const py::object&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&,
                                      const std::optional<at::Tensor>&, const LoopSpec&,
                                      const std::string&) {
  TORCH_CHECK(false, "use_cuda_graph=True needs dawm_fast._C built with CUDA; this build is "
              "CPU-only (torch without CUDA, or no CUDA toolkit found when it was built)");
}

#endif  // DAWM_FAST_WITH_CUDA

GraphSampler::GraphSampler(int64_t max_graphs) : max_graphs_(max_graphs) {
  TORCH_CHECK_VALUE(max_graphs >= 1, "GraphSampler: max_graphs must be >= 1, got ", dawm_fast::num(max_graphs));
}

GraphSampler::~GraphSampler() = default;

at::Tensor GraphSampler::sample(const py::object& forward, const at::Tensor& s0,
                                const at::Tensor& a0, const at::Tensor& returns,
                                const at::Tensor& noise,
                                const std::optional<at::Tensor>& step_noise, const LoopSpec& spec,
                                bool use_cuda_graph, const std::string& tag) {
  TORCH_CHECK(PyCallable_Check(forward.ptr()), kSample,
              ": forward must be callable as forward(x2, t2, returns2, actions2, mask2)");
  check_sample_args(s0, a0, returns, noise, step_noise, spec);
  if (use_cuda_graph) {
    TORCH_CHECK(s0.is_cuda(), "use_cuda_graph=True needs CUDA tensors; s0 is on ", s0.device());
  }
  TORCH_CHECK(!s0.is_cuda() || built_with_cuda(), kSample,
              ": s0 is on ", s0.device(), " but dawm_fast._C was built without its CUDA kernels "
              "(no CUDA toolkit was found when it was built); install the CUDA toolkit (nvcc) "
              "matching torch.version.cuda and rebuild, or use backend=\"reference\"");
  // Inference only; the thread-local mode also covers the Python forward.
  const c10::NoGradGuard no_grad;
  const c10::DeviceGuard device_guard(s0.device());
  if (use_cuda_graph) {
    return sample_graph(forward, s0, a0, returns, noise, step_noise, spec, tag);
  }
  std::optional<at::Tensor> step_noise_c;
  if (step_noise.has_value()) {
    step_noise_c = step_noise->contiguous();
  }
  return run_guided_loop(forward, s0.contiguous(), a0.contiguous(), returns.contiguous(),
                         noise.contiguous(), step_noise_c, spec);
}

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

namespace {

dawm_fast::LoopSpec make_spec(const std::vector<int64_t>& timesteps,
                              const std::vector<std::vector<double>>& coefs,
                              std::optional<double> clip, double w, double temperature) {
  dawm_fast::LoopSpec spec;
  spec.timesteps = timesteps;
  spec.clip = clip;
  spec.w = w;
  spec.temperature = temperature;
  spec.coefs.reserve(coefs.size());
  for (size_t i = 0; i < coefs.size(); ++i) {
    const auto& c = coefs[i];
    TORCH_CHECK(c.size() == 7, "GraphSampler.sample: coefs[", dawm_fast::num(i), "] must hold 7 floats "
                "(sqrt_recip_alpha, sqrt_recipm1_alpha, sqrt_alpha, recip_sqrt_one_minus_alpha, "
                "sqrt_alpha_prev, dir_coef, sigma), got ", dawm_fast::num(c.size()));
    spec.coefs.push_back({c[0], c[1], c[2], c[3], c[4], c[5], c[6]});
  }
  return spec;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dawm_fast C++/CUDA extension: fused guided DDIM update ops (torch.ops.dawm_fast) "
            "and GraphSampler, the guided sampling loop in C++ with CUDA graph replay.";
  m.def("with_cuda", &dawm_fast::built_with_cuda,
        "True when the extension was built with its CUDA kernels and CUDA graph support.");
  py::class_<dawm_fast::GraphSampler>(m, "GraphSampler", R"doc(
Runs the whole guided DDIM loop in C++, calling ``forward`` (the U-Net) once per step.

With ``use_cuda_graph=True`` (CUDA tensors only) the loop is captured into a CUDA graph on first
use for each input signature and replayed afterwards; at most ``max_graphs`` graphs are kept
(least recently used evicted first). A captured graph reads the network's parameters at their
addresses at capture time: call ``clear()`` after moving or re-creating them.
)doc")
      .def(py::init<int64_t>(), py::arg("max_graphs") = 4)
      .def(
          "sample",
          [](dawm_fast::GraphSampler& self, const py::object& forward, const at::Tensor& s0,
             const at::Tensor& a0, const at::Tensor& returns, const at::Tensor& noise,
             const std::optional<at::Tensor>& step_noise, const std::vector<int64_t>& timesteps,
             const std::vector<std::vector<double>>& coefs, std::optional<double> clip, double w,
             double temperature, bool use_cuda_graph, const std::string& tag) {
            return self.sample(forward, s0, a0, returns, noise, step_noise,
                               make_spec(timesteps, coefs, clip, w, temperature), use_cuda_graph,
                               tag);
          },
          py::arg("forward"), py::arg("s0"), py::arg("a0"), py::arg("returns"), py::arg("noise"),
          py::arg("step_noise"), py::arg("timesteps"), py::arg("coefs"), py::arg("clip"),
          py::arg("w"), py::arg("temperature"), py::arg("use_cuda_graph") = false,
          py::arg("tag") = "",
          R"doc(
Guided DDIM windows x [B, T, C].

forward(x2 [2B, T, C], t2 [2B] long, returns2 [2B], actions2 [2B, A], mask2 [2B]) -> eps2.
s0 [B, O], a0 [B, A], returns [B]; noise [B, T, C]: the raw initial randn; step_noise
[N, B, T, C] or None: the raw per-step randn (eta > 0); timesteps: the N DDIM timesteps;
coefs: per step (sqrt_recip_alpha, sqrt_recipm1_alpha, sqrt_alpha, recip_sqrt_one_minus_alpha,
sqrt_alpha_prev, dir_coef, sigma); clip: x0 bound or None; w: guidance weight; temperature:
scales both noises. tag: extra text in the graph key.
)doc")
      .def("graph_keys", &dawm_fast::GraphSampler::graph_keys,
           "Keys of the cached CUDA graphs, most recently used first.")
      .def("clear", &dawm_fast::GraphSampler::clear, "Drop every cached CUDA graph.")
      .def_property_readonly("max_graphs", &dawm_fast::GraphSampler::max_graphs)
      .def("__len__", [](dawm_fast::GraphSampler& self) { return self.graph_keys().size(); });
}
