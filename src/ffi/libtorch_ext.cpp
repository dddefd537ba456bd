// The libtorch C++ APIs that tch 0.24 does not wrap, as plain C functions for
// src/ffi/mod.rs: autocast with a chosen device and dtype, the device allocator's memory
// statistics, the fused AdamW kernel, the multi-tensor norm and scaling that
// torch.nn.utils.clip_grad_norm_ uses, and the multi-tensor lerp of a weight average.
//
// Every function returns 0 on success and -1 after a C++ exception, whose message
// vit_last_error() then returns: exceptions must not unwind into Rust.

#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstdint>
#include <string>
#include <vector>

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

// torch.cuda.max_memory_allocated / max_memory_reserved of the current accelerator.
int vit_accelerator_peak_memory(int8_t device_index, int64_t* peak_allocated,
                                int64_t* peak_reserved) {
  return guarded([&] {
    init_accelerator();
    const auto stats = at::accelerator::getDeviceStats(device_index);
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *peak_allocated = stats.allocated_bytes[aggregate].peak;
    *peak_reserved = stats.reserved_bytes[aggregate].peak;
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
// parameter shares, already incremented for this update.
int vit_fused_adamw(void* const* params, void* const* grads, void* const* exp_avgs,
                    void* const* exp_avg_sqs, void* step, int64_t count, double lr,
                    double beta1, double beta2, double weight_decay, double eps) {
  return guarded([&] {
    const auto steps =
        std::vector<at::Tensor>(count, *static_cast<at::Tensor*>(step));
    at::_fused_adamw_(tensor_list(params, count), tensor_list(grads, count),
                      tensor_list(exp_avgs, count), tensor_list(exp_avg_sqs, count),
                      /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
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

}  // extern "C"
