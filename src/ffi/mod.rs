//! Safe wrappers over `libtorch_ext.cpp` (compiled by build.rs): the libtorch C++ APIs that
//! tch 0.24 leaves out. bf16 autocast on the CPU as on CUDA (tch only enables CUDA
//! autocast, in float16), CUDA peak memory as `torch.cuda.max_memory_allocated`
//! reports it, the fused AdamW kernel, and the multi-tensor norm and scaling of
//! `clip_grad_norm_` and lerp of a weight average (one kernel launch for all tensors on
//! CUDA instead of one each).

use anyhow::{bail, ensure, Result};
use std::ffi::{c_void, CStr};
use tch::{Device, Tensor};

extern "C" {
    fn vit_last_error() -> *const std::ffi::c_char;
    fn vit_autocast_enter(
        device_type: i8,
        dtype: i8,
        prev_enabled: *mut bool,
        prev_dtype: *mut i8,
    ) -> i32;
    fn vit_autocast_exit(device_type: i8, prev_enabled: bool, prev_dtype: i8) -> i32;
    fn vit_accelerator_peak_memory(
        device_index: i8,
        peak_allocated: *mut i64,
        peak_reserved: *mut i64,
    ) -> i32;
    fn vit_accelerator_reset_peak_memory(device_index: i8) -> i32;
    fn vit_fused_adamw(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        step: *mut c_void,
        count: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> i32;
    fn vit_foreach_norm(tensors: *const *mut c_void, count: i64, norms: *mut *mut c_void) -> i32;
    fn vit_foreach_mul_(tensors: *const *mut c_void, count: i64, factor: *mut c_void) -> i32;
    fn vit_foreach_lerp_(
        tensors: *const *mut c_void,
        ends: *const *mut c_void,
        count: i64,
        weight: f64,
    ) -> i32;
}

/// c10::DeviceType values.
const DEVICE_TYPE_CPU: i8 = 0;
const DEVICE_TYPE_CUDA: i8 = 1;
/// c10::ScalarType::BFloat16.
const SCALAR_TYPE_BFLOAT16: i8 = 15;

/// Turns a shim status into a Result carrying the C++ exception's message.
fn check(status: i32, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: vit_last_error returns a NUL-terminated thread-local string that stays valid
    // until the next shim call on this thread; it is copied at once.
    let message = unsafe { CStr::from_ptr(vit_last_error()) }.to_string_lossy();
    bail!("libtorch {what} failed: {message}")
}

fn device_type(device: Device) -> i8 {
    match device {
        Device::Cuda(_) => DEVICE_TYPE_CUDA,
        _ => DEVICE_TYPE_CPU,
    }
}

/// Runs `f` with bf16 autocast on `device`'s type, as
/// `with torch.autocast(device.type, dtype=torch.bfloat16): f()`, restoring the previous
/// state after.
pub fn autocast_bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let device_type = device_type(device);
    let (mut prev_enabled, mut prev_dtype) = (false, 0i8);
    // SAFETY: plain setters of libtorch's thread-local autocast state; out-pointers are live.
    let status = unsafe {
        vit_autocast_enter(
            device_type,
            SCALAR_TYPE_BFLOAT16,
            &mut prev_enabled,
            &mut prev_dtype,
        )
    };
    check(status, "autocast").expect("entering autocast");
    // Restores the state on the way out, also when `f` panics.
    struct Exit(i8, bool, i8);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: as above.
            let status = unsafe { vit_autocast_exit(self.0, self.1, self.2) };
            // Reported, not raised: a panic here while `f` unwinds would abort.
            if let Err(e) = check(status, "autocast") {
                eprintln!("warning: {e:#}");
            }
        }
    }
    let _exit = Exit(device_type, prev_enabled, prev_dtype);
    f()
}

/// Peak bytes of the CUDA caching allocator since the last reset: allocated to tensors
/// (`torch.cuda.max_memory_allocated`) and reserved from the device
/// (`torch.cuda.max_memory_reserved`).
#[derive(Debug, Clone, Copy)]
pub struct PeakMemory {
    pub allocated: i64,
    pub reserved: i64,
}

/// `device`'s peak memory, None for the CPU (whose figure is the process's peak RSS).
pub fn peak_memory(device: Device) -> Result<Option<PeakMemory>> {
    let Device::Cuda(index) = device else {
        return Ok(None);
    };
    let (mut allocated, mut reserved) = (0i64, 0i64);
    // SAFETY: out-pointers are live; the index names a CUDA device tch has used.
    let status = unsafe { vit_accelerator_peak_memory(index as i8, &mut allocated, &mut reserved) };
    check(status, "memory statistics")?;
    Ok(Some(PeakMemory {
        allocated,
        reserved,
    }))
}

/// Starts `peak_memory` afresh from the memory in use now (no-op on the CPU).
pub fn reset_peak_memory(device: Device) -> Result<()> {
    if let Device::Cuda(index) = device {
        // SAFETY: as in `peak_memory`.
        check(
            unsafe { vit_accelerator_reset_peak_memory(index as i8) },
            "memory statistics",
        )?;
    }
    Ok(())
}

/// One tensor of each parameter for `fused_adamw`: the parameter, its gradient, and its
/// two moment estimates, all on one device with the parameter's shape.
pub struct AdamWSlot<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
}

/// libtorch's fused AdamW kernel (`torch._fused_adamw_`, what `torch.optim.AdamW(fused=True)`
/// runs) over `slots`, updating the parameters and moments in place. `step` is a float32
/// tensor of shape [] on the parameters' device holding the step number, already
/// incremented.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    slots: &[AdamWSlot],
    step: &Tensor,
    lr: f64,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    eps: f64,
) -> Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    let params = handles(slots.iter().map(|s| s.param));
    let grads = handles(slots.iter().map(|s| s.grad));
    let exp_avgs = handles(slots.iter().map(|s| s.exp_avg));
    let exp_avg_sqs = handles(slots.iter().map(|s| s.exp_avg_sq));
    // SAFETY: each array holds `slots.len()` live tensor handles, borrowed for the call.
    let status = unsafe {
        vit_fused_adamw(
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            step.as_ptr() as *mut c_void,
            slots.len() as i64,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
        )
    };
    check(status, "fused AdamW")
}

/// `torch._foreach_norm(tensors, 2)`: each tensor's L2 norm, shape [] and the tensor's dtype.
pub fn foreach_norm(tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    let inputs = handles(tensors.iter());
    let mut norms = vec![std::ptr::null_mut::<c_void>(); tensors.len()];
    // SAFETY: `inputs` holds live handles; `norms` has room for one output each.
    let status =
        unsafe { vit_foreach_norm(inputs.as_ptr(), inputs.len() as i64, norms.as_mut_ptr()) };
    check(status, "foreach norm")?;
    // SAFETY: each output is a tensor the shim allocated with `new`, owned from here on
    // by the Tensor, whose drop deletes it as tch's own outputs.
    Ok(norms
        .into_iter()
        .map(|ptr| unsafe { Tensor::from_ptr(ptr as *mut _) })
        .collect())
}

/// `torch._foreach_mul_(tensors, factor)`: scales every tensor in place by the scalar
/// tensor `factor`, which stays on the device.
pub fn foreach_mul_(tensors: &[Tensor], factor: &Tensor) -> Result<()> {
    let inputs = handles(tensors.iter());
    // SAFETY: `inputs` and `factor` are live handles borrowed for the call.
    let status = unsafe {
        vit_foreach_mul_(
            inputs.as_ptr(),
            inputs.len() as i64,
            factor.as_ptr() as *mut c_void,
        )
    };
    check(status, "foreach mul")
}

/// `torch._foreach_lerp_(tensors, ends, weight)`: each tensor moves `weight` of the way to
/// its partner in `ends` (same shapes), in place.
pub fn foreach_lerp_(tensors: &[Tensor], ends: &[Tensor], weight: f64) -> Result<()> {
    ensure!(tensors.len() == ends.len(), "foreach lerp of unequal lists");
    let (inputs, ends) = (handles(tensors.iter()), handles(ends.iter()));
    // SAFETY: both arrays hold live handles of the same length, borrowed for the call.
    let status =
        unsafe { vit_foreach_lerp_(inputs.as_ptr(), ends.as_ptr(), inputs.len() as i64, weight) };
    check(status, "foreach lerp")
}

/// The C++ handles of `tensors`, borrowed: valid while the tensors live.
fn handles<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Vec<*mut c_void> {
    tensors.map(|t| t.as_ptr() as *mut c_void).collect()
}
