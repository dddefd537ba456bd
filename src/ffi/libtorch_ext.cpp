// The libtorch C++ APIs that tch 0.24 does not wrap, as plain C functions for
// src/ffi/mod.rs: autocast with a chosen device and dtype, the device allocator's memory
// statistics, the fused AdamW kernel, the multi-tensor norm and scaling that
// torch.nn.utils.clip_grad_norm_ uses, the multi-tensor lerp of a weight average, a linear
// layer whose matrix products run in oneDNN on the CPU, and CUDA graphs (capture on a side
// stream, replay).
//
// The CUDA part is compiled only where build.rs found libtorch_cuda and the CUDA runtime
// headers (it defines VIT_CUDA); elsewhere those functions fail with a message saying so.
//
// Every function returns 0 on success and -1 after a C++ exception, whose message
// vit_last_error() then returns: exceptions must not unwind into Rust.

#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>

#ifdef VIT_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <memory>
#endif

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

// tch passes tensors as pointers to at::Tensor; copies share storage, so in-place kernels
// on the copies update the caller's tensors.
std::vector<at::Tensor> tensor_list(void* const* tensors, int64_t count) {
  std::vector<at::Tensor> list;
  list.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    list.push_back(*static_cast<at::Tensor*>(tensors[i]));
  }
  return list;
}

// The allocator refuses statistics ("did you call init?") until the accelerator has been
// initialised, which a tensor on it does, and so does this (as torch.cuda's functions).
void init_accelerator() {
  if (const auto device_type = at::accelerator::getAccelerator(false)) {
    at::globalContext().lazyInitDevice(*device_type);
  }
}

// oneDNN's matrix product a b^T (+ bias) through libtorch's `mkldnn::_linear_pointwise`
// operator (what torch.compile's CPU inference uses): a [..., k], b [n, k], bias [n] ->
// [..., n]; either operand may be strided. None where libtorch has no CPU kernel for it
// (a build without oneDNN).
std::optional<c10::TypedOperatorHandle<at::Tensor(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, std::string_view,
    c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>)>>
onednn_linear_op() {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, std::string_view,
                               c10::List<std::optional<at::Scalar>>,
                               std::optional<std::string_view>);
  static const auto op = []() -> std::optional<c10::TypedOperatorHandle<Signature>> {
    try {
      const auto handle =
          c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
      if (handle && handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
        return handle->typed<Signature>();
      }
    } catch (...) {
      // A signature that does not match this libtorch's: leave the operator alone.
    }
    return std::nullopt;
  }();
  return op;
}

at::Tensor onednn_matmul_t(const at::Tensor& a, const at::Tensor& b,
                           const std::optional<at::Tensor>& bias) {
  return onednn_linear_op()->call(a, b, bias, "none", c10::List<std::optional<at::Scalar>>(),
                                  std::nullopt);
}

// A linear layer, input [..., in] x weight [out, in] (+ bias [out]) -> [..., out], whose
// forward product and input gradient run in oneDNN (the weight gradient as libtorch's
// linear computes it, below). The operator has no gradient of its own, hence this autograd
// function. Its backward is not differentiable in turn (no double backward), which
// training never needs.
struct OneDnnLinear : public torch::autograd::Function<OneDnnLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    return onednn_matmul_t(input, weight, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& input = saved[0];
    const auto& weight = saved[1];
    const auto grad = grads[0].reshape({-1, grads[0].size(-1)});
    at::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      // grad [M, out] x weight [out, in]: b^T is weight^T, a small copy.
      grad_input = onednn_matmul_t(grad, weight.t().contiguous(), std::nullopt)
                       .view(input.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      // grad^T [out, M] x input [M, in], summed over all M rows: at::mm, as libtorch's own
      // linear does, where oneDNN ran at 0.44 to 0.98 times its speed on an AMD EPYC and an
      // Intel Xeon (bench/cpu_kernels.py).
      grad_weight = grad.t().mm(input.reshape({-1, input.size(-1)}));
    }
    // Without a bias, there is no third gradient to ask about.
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grad.sum(0);
    }
    return {grad_input, grad_weight, grad_bias};
  }
};

#ifdef VIT_CUDA
// Makes CUDA device `device` current while it lives. The generic guard, not CUDAGuard,
// whose inline implementation would need libcudart linked directly.
c10::DeviceGuard cuda_device_guard(c10::DeviceIndex device) {
  return c10::DeviceGuard(c10::Device(c10::DeviceType::CUDA, device));
}

// Makes `waiter` wait for the work queued on `stream` so far (torch.cuda.Stream.wait_stream).
void wait_stream(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& stream) {
  c10::Event event(c10::DeviceType::CUDA);
  event.record(stream.unwrap());
  event.block(waiter.unwrap());
}

// A stream from libtorch's pool made current, ordered after the work queued before it and
// before the work queued after it (`with torch.cuda.stream(s)` plus wait_stream both ways).
// CUDA graphs are captured on such a stream, never on the default one, and PyTorch warms a
// step up on one before capturing it. The device is made current too, for as long as the
// object lives: a capture takes its stream and device from the current ones.
class SideStream {
 public:
  explicit SideStream(c10::DeviceIndex device)
      : device_(cuda_device_guard(device)),
        ambient_(c10::cuda::getCurrentCUDAStream(device)),
        side_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device)) {
    wait_stream(side_, ambient_);
    c10::cuda::setCurrentCUDAStream(side_);
  }
  // The ambient stream is current again even if the wait cannot be queued.
  void leave() {
    c10::cuda::setCurrentCUDAStream(ambient_);
    wait_stream(ambient_, side_);
  }

 private:
  c10::DeviceGuard device_;
  c10::cuda::CUDAStream ambient_;
  c10::cuda::CUDAStream side_;
};

// A graph and what its capture changed, to be restored when the capture ends.
struct Graph {
  explicit Graph(c10::DeviceIndex device) : device(device) {}
  c10::DeviceIndex device;
  at::cuda::CUDAGraph graph;
  std::optional<SideStream> capture_stream;
  bool autocast_cache_enabled = true;

  // Undoes what starting the capture changed: the autocast cache and the current stream
  // and device. It must not throw: it also runs while a failed capture's exception
  // unwinds.
  void restore() noexcept {
    at::autocast::set_autocast_cache_enabled(autocast_cache_enabled);
    try {
      if (capture_stream) {
        capture_stream->leave();
      }
    } catch (...) {
    }
    capture_stream.reset();
  }
};
#else
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "this vit was built against a libtorch without CUDA (or without the CUDA runtime "
      "headers), so it has no CUDA graphs: rebuild it against a CUDA build of torch");
}
#endif

}  // namespace

extern "C" {

const char* vit_last_error() { return last_error.c_str(); }

// As entering torch.autocast(device_type, dtype): records the previous state in *prev_*.
int vit_autocast_enter(int8_t device_type, int8_t dtype, bool* prev_enabled,
                       int8_t* prev_dtype) {
  return guarded([&] {
    const auto device = static_cast<c10::DeviceType>(device_type);
    *prev_enabled = at::autocast::is_autocast_enabled(device);
    *prev_dtype = static_cast<int8_t>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(dtype));
    at::autocast::increment_nesting();
  });
}

// As leaving torch.autocast: restores the state vit_autocast_enter recorded, and drops the
// cast-weight cache when the outermost region ends.
int vit_autocast_exit(int8_t device_type, bool prev_enabled, int8_t prev_dtype) {
  return guarded([&] {
    const auto device = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, prev_enabled);
    at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(prev_dtype));
  });
}

// torch.cuda.max_memory_allocated of the current accelerator.
int vit_accelerator_peak_memory(int8_t device_index, int64_t* peak_allocated) {
  return guarded([&] {
    init_accelerator();
    const auto stats = at::accelerator::getDeviceStats(device_index);
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *peak_allocated = stats.allocated_bytes[aggregate].peak;
  });
}

// torch.cuda.reset_peak_memory_stats of the current accelerator.
int vit_accelerator_reset_peak_memory(int8_t device_index) {
  return guarded([&] {
    init_accelerator();
    at::accelerator::resetPeakStats(device_index);
  });
}

// torch._fused_adamw_ over `count` parameters (amsgrad and maximize off), as
// torch.optim.AdamW(fused=True) calls it; `step` is the float step counter every
// parameter shares, already incremented for this update. The learning rate is `lr`, or,
// when `lr_tensor` is not null, that tensor (the overload a CUDA graph replays, reading
// the rate from device memory).
int vit_fused_adamw(void* const* params, void* const* grads, void* const* exp_avgs,
                    void* const* exp_avg_sqs, void* step, int64_t count, double lr,
                    void* lr_tensor, double beta1, double beta2, double weight_decay,
                    double eps) {
  return guarded([&] {
    const auto steps =
        std::vector<at::Tensor>(count, *static_cast<at::Tensor*>(step));
    const auto params_ = tensor_list(params, count);
    const auto grads_ = tensor_list(grads, count);
    const auto exp_avgs_ = tensor_list(exp_avgs, count);
    const auto exp_avg_sqs_ = tensor_list(exp_avg_sqs, count);
    if (lr_tensor != nullptr) {
      at::_fused_adamw_(params_, grads_, exp_avgs_, exp_avg_sqs_, /*max_exp_avg_sqs=*/{},
                        steps, *static_cast<at::Tensor*>(lr_tensor), beta1, beta2,
                        weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
    } else {
      at::_fused_adamw_(params_, grads_, exp_avgs_, exp_avg_sqs_, /*max_exp_avg_sqs=*/{},
                        steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                        /*maximize=*/false);
    }
  });
}

// Whether this libtorch has oneDNN's linear operator with a CPU kernel (x86-64 builds of
// torch do).
bool vit_onednn_linear_available() { return onednn_linear_op().has_value(); }

// torch.nn.functional.linear(input, weight, bias) (bias may be null) into *output, a new
// tensor the caller owns. Float32 CPU tensors outside autocast whose product has at least
// min_multiply_adds (ffi::ONEDNN_MIN_MULTIPLY_ADDS) go through OneDnnLinear; everything else
// (CUDA, other dtypes, autocast, small or empty products, a libtorch without oneDNN)
// through at::linear, as PyTorch runs it.
int vit_onednn_linear(void* input, void* weight, void* bias, int64_t min_multiply_adds,
                      void** output) {
  return guarded([&] {
    const auto& x = *static_cast<at::Tensor*>(input);
    const auto& w = *static_cast<at::Tensor*>(weight);
    const auto b = bias ? std::make_optional(*static_cast<at::Tensor*>(bias)) : std::nullopt;
    const int64_t rows = x.dim() > 0 && x.size(-1) > 0 ? x.numel() / x.size(-1) : 0;
    const bool onednn = onednn_linear_op().has_value() && x.is_cpu() && w.is_cpu() &&
                        x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
                        (!b || b->scalar_type() == at::kFloat) &&
                        !at::autocast::is_autocast_enabled(at::kCPU) && w.dim() == 2 &&
                        rows * w.size(0) * w.size(1) >= min_multiply_adds;
    *output = new at::Tensor(onednn ? OneDnnLinear::apply(x, w, b) : at::linear(x, w, b));
  });
}

// torch._foreach_norm(tensors, 2): writes `count` new tensors (float scalars) to `norms`,
// each owned by the caller (tch frees them).
int vit_foreach_norm(void* const* tensors, int64_t count, void** norms) {
  return guarded([&] {
    const auto results = at::_foreach_norm(tensor_list(tensors, count), 2);
    for (int64_t i = 0; i < count; ++i) {
      norms[i] = new at::Tensor(results[i]);
    }
  });
}

// torch._foreach_mul_(tensors, factor) with a scalar tensor `factor`, in place.
int vit_foreach_mul_(void* const* tensors, int64_t count, void* factor) {
  return guarded([&] {
    at::_foreach_mul_(tensor_list(tensors, count), *static_cast<at::Tensor*>(factor));
  });
}

// torch._foreach_lerp_(tensors, ends, weight), in place: tensors += weight * (ends - tensors).
int vit_foreach_lerp_(void* const* tensors, void* const* ends, int64_t count, double weight) {
  return guarded([&] {
    at::_foreach_lerp_(tensor_list(tensors, count), tensor_list(ends, count), weight);
  });
}

// Makes a side stream of CUDA device `device` current (see SideStream); *scope is what
// vit_cuda_side_stream_leave needs.
int vit_cuda_side_stream_enter(int8_t device, void** scope) {
  return guarded([&] {
#ifdef VIT_CUDA
    *scope = new SideStream(device);
#else
    no_cuda();
#endif
  });
}

// Makes the stream current before vit_cuda_side_stream_enter current again, after the
// work queued on the side stream, and frees `scope`.
int vit_cuda_side_stream_leave(void* scope) {
  return guarded([&] {
#ifdef VIT_CUDA
    const std::unique_ptr<SideStream> side(static_cast<SideStream*>(scope));
    side->leave();
#else
    no_cuda();
#endif
  });
}

// As entering `with torch.cuda.graph(g)`: makes `device` and a side stream of it current,
// waits for the device, frees cached blocks and starts capturing the side stream into a
// new graph (*graph). Autocast's
// cast-weight cache is turned off until the capture ends, as PyTorch requires: a cached
// cast made during capture would outlive the graph memory it sits in.
int vit_cuda_graph_capture_begin(int8_t device, void** graph) {
  return guarded([&] {
#ifdef VIT_CUDA
    auto captured = std::make_unique<Graph>(device);
    captured->autocast_cache_enabled = at::autocast::is_autocast_cache_enabled();
    // The side stream first: its guard makes `device` current until the capture ends and
    // then restores the caller's (a guard local to this function would restore it here,
    // and the capture would run on another device's current state).
    captured->capture_stream.emplace(device);
    try {
      c10::cuda::device_synchronize();
      c10::cuda::CUDACachingAllocator::emptyCache();
      at::autocast::set_autocast_cache_enabled(false);
      captured->graph.capture_begin();
    } catch (...) {
      captured->restore();
      throw;
    }
    *graph = captured.release();
#else
    no_cuda();
#endif
  });
}

// As leaving `with torch.cuda.graph(g)`: ends the capture (instantiating the graph), then
// restores the stream and the autocast cache, also when ending the capture failed.
int vit_cuda_graph_capture_end(void* graph) {
  return guarded([&] {
#ifdef VIT_CUDA
    auto* captured = static_cast<Graph*>(graph);
    struct Restore {
      Graph* captured;
      ~Restore() { captured->restore(); }
    } restore{captured};
    captured->graph.capture_end();
#else
    no_cuda();
#endif
  });
}

// Launches the captured work once on the current stream (torch.cuda.CUDAGraph.replay).
int vit_cuda_graph_replay(void* graph) {
  return guarded([&] {
#ifdef VIT_CUDA
    auto* captured = static_cast<Graph*>(graph);
    const auto guard = cuda_device_guard(captured->device);
    captured->graph.replay();
#else
    no_cuda();
#endif
  });
}

// Frees a graph from vit_cuda_graph_capture_begin, and the device memory it holds.
void vit_cuda_graph_free(void* graph) {
#ifdef VIT_CUDA
  delete static_cast<Graph*>(graph);
#endif
}

}  // extern "C"
