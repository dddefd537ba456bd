//! Safe wrappers over `libtorch_ext.cpp` (compiled by build.rs): the libtorch C++ APIs that
//! tch 0.24 leaves out. bf16 autocast on the CPU as on CUDA (tch only enables CUDA
//! autocast, in float16), CUDA peak memory as `torch.cuda.max_memory_allocated`
//! reports it, the fused AdamW kernel, and the multi-tensor norm and scaling of
//! `clip_grad_norm_` and lerp of a weight average (one kernel launch for all tensors on
//! CUDA instead of one each), a linear layer whose matrix products run in oneDNN, and CUDA
//! graphs (`torch.cuda.graph`); and a new CPU tensor written in place from Rust threads,
//! which tch has no safe way to do.

use crate::cli::Precision;
use anyhow::{anyhow, bail, ensure, Result};
use std::ffi::{c_void, CStr};
use std::mem::MaybeUninit;
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
    fn vit_accelerator_peak_memory(device_index: i8, peak_allocated: *mut i64) -> i32;
    fn vit_accelerator_reset_peak_memory(device_index: i8) -> i32;
    fn vit_fused_adamw(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        step: *mut c_void,
        count: i64,
        lr: f64,
        lr_tensor: *mut c_void,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> i32;
    fn vit_onednn_linear_available() -> bool;
    fn vit_onednn_linear(
        input: *mut c_void,
        weight: *mut c_void,
        bias: *mut c_void,
        min_multiply_adds: i64,
        output: *mut *mut c_void,
    ) -> i32;
    fn vit_foreach_norm(tensors: *const *mut c_void, count: i64, norms: *mut *mut c_void) -> i32;
    fn vit_foreach_mul_(tensors: *const *mut c_void, count: i64, factor: *mut c_void) -> i32;
    fn vit_foreach_lerp_(
        tensors: *const *mut c_void,
        ends: *const *mut c_void,
        count: i64,
        weight: f64,
    ) -> i32;
    fn vit_cuda_side_stream_enter(device: i8, scope: *mut *mut c_void) -> i32;
    fn vit_cuda_side_stream_leave(scope: *mut c_void) -> i32;
    fn vit_cuda_graph_capture_begin(device: i8, graph: *mut *mut c_void) -> i32;
    fn vit_cuda_graph_capture_end(graph: *mut c_void) -> i32;
    fn vit_cuda_graph_replay(graph: *mut c_void) -> i32;
    fn vit_cuda_graph_free(graph: *mut c_void);
}

/// c10::DeviceType values.
const DEVICE_TYPE_CPU: i8 = 0;
const DEVICE_TYPE_CUDA: i8 = 1;
/// c10::ScalarType::BFloat16.
const SCALAR_TYPE_BFLOAT16: i8 = 15;

/// How [`check`] words a failed call: `libtorch WHAT failed: ERROR`.
const CALL_NAMED: &str = "libtorch ";
const CALL_FAILED: &str = " failed: ";

/// Turns a shim status into a Result carrying the C++ exception's message.
fn check(status: i32, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: vit_last_error returns a NUL-terminated thread-local string that stays valid
    // until the next shim call on this thread; it is copied at once.
    let message = unsafe { CStr::from_ptr(vit_last_error()) }.to_string_lossy();
    bail!("{CALL_NAMED}{what}{CALL_FAILED}{message}")
}

/// The call's name and the first line of libtorch's error where `panic` is the message of
/// a [`check`] error unwrapped (`expect("CONTEXT")`: `CONTEXT: libtorch WHAT failed: ERROR`,
/// libtorch's C++ stack on the lines after); None for any other panic.
pub(crate) fn unwrapped_failure(panic: &str) -> Option<(&str, &str)> {
    let first_line = panic.lines().next()?;
    let (_, call) = first_line.split_once(&format!(": {CALL_NAMED}"))?;
    call.split_once(CALL_FAILED)
}

fn device_type(device: Device) -> i8 {
    match device {
        Device::Cuda(_) => DEVICE_TYPE_CUDA,
        _ => DEVICE_TYPE_CPU,
    }
}

/// Runs `f` as `--precision` says: as it is (fp32), or under [`autocast_bf16`].
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    match precision {
        Precision::Fp32 => f(),
        Precision::Bf16 => autocast_bf16(device, f),
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

/// `device`'s peak bytes allocated to tensors by the CUDA caching allocator since the last
/// reset (`torch.cuda.max_memory_allocated`); None for the CPU (whose figure is the
/// process's peak RSS).
pub fn peak_memory(device: Device) -> Result<Option<i64>> {
    let Device::Cuda(index) = device else {
        return Ok(None);
    };
    let mut allocated = 0i64;
    // SAFETY: the out-pointer is live; the index names a CUDA device tch has used.
    let status = unsafe { vit_accelerator_peak_memory(index as i8, &mut allocated) };
    check(status, "memory statistics")?;
    Ok(Some(allocated))
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

/// The learning rate of a fused AdamW update.
#[derive(Clone, Copy)]
pub enum LearningRate<'a> {
    Value(f64),
    /// A float32 tensor of shape [] on the parameters' device, read by the kernel when it
    /// runs: what a CUDA graph needs, since it replays the value captured with it.
    Tensor(&'a Tensor),
}

/// libtorch's fused AdamW kernel (`torch._fused_adamw_`, what `torch.optim.AdamW(fused=True)`
/// runs) over `slots`, updating the parameters and moments in place. `step` is a float32
/// tensor of shape [] on the parameters' device holding the step number, already
/// incremented.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    slots: &[AdamWSlot],
    step: &Tensor,
    lr: LearningRate,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    eps: f64,
) -> Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    check_adamw_tensors(slots, step, lr)?;
    let params = handles(slots.iter().map(|s| s.param));
    let grads = handles(slots.iter().map(|s| s.grad));
    let exp_avgs = handles(slots.iter().map(|s| s.exp_avg));
    let exp_avg_sqs = handles(slots.iter().map(|s| s.exp_avg_sq));
    let (lr_value, lr_tensor) = match lr {
        LearningRate::Value(value) => (value, std::ptr::null_mut()),
        LearningRate::Tensor(tensor) => (f64::NAN, tensor.as_ptr() as *mut c_void),
    };
    // SAFETY: each array holds `slots.len()` live tensor handles, borrowed for the call,
    // and `lr_tensor` is null or a live handle.
    let status = unsafe {
        vit_fused_adamw(
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            step.as_ptr() as *mut c_void,
            slots.len() as i64,
            lr_value,
            lr_tensor,
            beta1,
            beta2,
            weight_decay,
            eps,
        )
    };
    check(status, "fused AdamW")
}

/// Refuses what libtorch's fused AdamW kernel would not: it walks each parameter's memory
/// for the parameter's element count, reading and writing the other three tensors of its
/// slot alike, so a smaller or strided one would be read past its end (on the CPU it
/// checks neither shapes nor strides), and one on another device dereferenced as host
/// memory.
fn check_adamw_tensors(slots: &[AdamWSlot], step: &Tensor, lr: LearningRate) -> Result<()> {
    let device = slots[0].param.device();
    let scalar = |tensor: &Tensor, what: &str| {
        ensure!(
            tensor.defined()
                && tensor.kind() == tch::Kind::Float
                && tensor.numel() == 1
                && tensor.device() == device,
            "fused AdamW: {what} must be a float32 tensor of one element on {device:?}"
        );
        Ok(())
    };
    scalar(step, "the step")?;
    if let LearningRate::Tensor(lr) = lr {
        scalar(lr, "the learning rate")?;
    }
    for (index, slot) in slots.iter().enumerate() {
        let tensors = [slot.param, slot.grad, slot.exp_avg, slot.exp_avg_sq];
        ensure!(
            tensors.iter().all(|t| t.defined()),
            "fused AdamW: parameter {index} has an undefined tensor"
        );
        let shape = slot.param.size();
        ensure!(
            tensors.iter().all(|t| t.device() == device
                && t.kind() == slot.param.kind()
                && t.size() == shape
                && t.is_contiguous()),
            "fused AdamW: parameter {index}'s tensors (parameter, gradient and moments) must \
             all be contiguous, of its shape {shape:?} and dtype, on {device:?}"
        );
    }
    Ok(())
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

/// `torch._foreach_mul_(tensors, factor)`: scales every tensor in place by `factor`, a
/// tensor of shape [] that stays on the device.
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

/// Products smaller than this many multiply-adds stay with libtorch's `linear` in
/// [`onednn_linear`]: below it, measured on this project's AMD EPYC
/// (bench/cpu_kernels.py), oneDNN's set-up per call costs more than its faster product
/// saves. It is a batch of one notebook-size image, [65, 256] x [256, 256].
pub const ONEDNN_MIN_MULTIPLY_ADDS: i64 = 65 * 256 * 256;

/// `torch.nn.functional.linear(input, weight, bias)`: [..., in_dim] x [out_dim, in_dim]
/// (+ `[out_dim]`) -> [..., out_dim]. For float32 CPU tensors outside autocast, the product
/// and the input's gradient run in oneDNN, which on this project's AMD EPYC machine is up
/// to twice as fast as the MKL GEMM that libtorch's `linear` (and so PyTorch) calls there;
/// the weight's gradient is MKL's, as in `linear`, where oneDNN was the slower. (On an
/// Intel Xeon MKL's products were the faster: the model's linear layers call this on AMD's
/// CPUs alone, `model::onednn_linear_by_default`.) Otherwise, and for products under
/// [`ONEDNN_MIN_MULTIPLY_ADDS`], it is libtorch's `linear`.
pub fn onednn_linear(input: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let bias = bias.map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut c_void);
    let mut output = std::ptr::null_mut();
    // SAFETY: live handles borrowed for the call (a null bias is none); the output pointer
    // is live.
    let status = unsafe {
        vit_onednn_linear(
            input.as_ptr() as *mut c_void,
            weight.as_ptr() as *mut c_void,
            bias,
            ONEDNN_MIN_MULTIPLY_ADDS,
            &mut output,
        )
    };
    check(status, "oneDNN linear")?;
    // SAFETY: a tensor the shim allocated with `new`, owned from here on by the Tensor.
    Ok(unsafe { Tensor::from_ptr(output as *mut _) })
}

/// Whether `onednn_linear` can use oneDNN: libtorch has its linear operator.
pub fn onednn_linear_available() -> bool {
    // SAFETY: reads a static of the shim.
    unsafe { vit_onednn_linear_available() }
}

/// The index of a CUDA device, or an error naming what needs one.
fn cuda_index(device: Device, what: &str) -> Result<i8> {
    match device {
        Device::Cuda(index) => Ok(index as i8),
        other => bail!("{what} needs a CUDA device, not {other:?}"),
    }
}

/// A new contiguous CPU tensor of `shape` and `T`s, its elements written in place by `fill`
/// (decoded images, a dropout mask: no second buffer to copy from, and no zeros written
/// first, which made a [128, 65, 256] dropout mask take 0.98 ms rather than 0.52), with
/// what `fill` gives. An error where libtorch cannot allocate it.
///
/// # Safety
/// `fill` must write every element of the slice it is given, or else the caller must drop
/// the tensor unread (where what `fill` gives says it failed): an element never written
/// would be read as a value.
pub unsafe fn new_cpu_tensor<T: tch::kind::Element, R>(
    shape: &[i64],
    fill: impl FnOnce(&mut [MaybeUninit<T>]) -> R,
) -> Result<(Tensor, R), tch::TchError> {
    let tensor = Tensor::f_empty(shape, (T::KIND, Device::Cpu))?;
    let len = tensor.numel();
    let given = match len {
        // An empty tensor has no data pointer to make a slice of.
        0 => fill(&mut []),
        // SAFETY: a fresh, contiguous CPU tensor of `len` `T`s, which nothing else sees
        // until this function returns it, after the slice is gone; as MaybeUninit, its
        // memory is not read before it is written.
        _ => fill(unsafe {
            std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut MaybeUninit<T>, len)
        }),
    };
    Ok((tensor, given))
}

/// Runs `f` with a side stream of the CUDA `device` current, ordered after the work queued
/// before and before the work queued after (as PyTorch warms up a step it will capture).
/// The ambient stream is current again afterwards, also when `f` panics.
pub fn on_side_stream<T>(device: Device, f: impl FnOnce() -> T) -> Result<T> {
    let index = cuda_index(device, "a side stream")?;
    let mut scope = std::ptr::null_mut();
    // SAFETY: the out-pointer is live.
    check(
        unsafe { vit_cuda_side_stream_enter(index, &mut scope) },
        "side stream",
    )?;
    struct Leave(*mut c_void);
    impl Drop for Leave {
        fn drop(&mut self) {
            // SAFETY: the scope from vit_cuda_side_stream_enter, left once.
            let status = unsafe { vit_cuda_side_stream_leave(self.0) };
            if let Err(e) = check(status, "side stream") {
                eprintln!("warning: {e:#}");
            }
        }
    }
    let _leave = Leave(scope);
    Ok(f())
}

/// A CUDA graph: the kernels one call of a closure queued, recorded once and then launched
/// again with `replay`, at the cost of a single launch. A replay reads and writes the very
/// tensors the capture used, so new inputs are copied into those; host-side code of the
/// closure does not run again.
pub struct CudaGraph {
    handle: *mut c_void,
}

impl CudaGraph {
    /// Captures what `f` queues on the CUDA `device`, as `with torch.cuda.graph(g): f()`:
    /// the kernels are recorded, not run. `f` must not wait for the device (reading a
    /// tensor's value, for example), which capture forbids; a panic or libtorch error
    /// inside `f` becomes the error returned here.
    pub fn capture<T>(device: Device, f: impl FnOnce() -> T) -> Result<(Self, T)> {
        let index = cuda_index(device, "a CUDA graph")?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: the out-pointer is live.
        check(
            unsafe { vit_cuda_graph_capture_begin(index, &mut handle) },
            "CUDA graph capture",
        )?;
        let graph = Self { handle };
        let result = crate::runtime::catch_panic(f);
        // SAFETY: the handle began capturing above and ends it once.
        let ended = check(
            unsafe { vit_cuda_graph_capture_end(graph.handle) },
            "CUDA graph capture",
        );
        let outcome = match result {
            Err(error) => Err(anyhow!("CUDA graph capture failed: {error:#}")),
            Ok(value) => ended.map(|()| value),
        };
        match outcome {
            Ok(value) => Ok((graph, value)),
            Err(error) => {
                // Not freed: freeing a graph whose capture failed may abort the process
                // before this error reaches the user, who cannot go on with CUDA anyway.
                std::mem::forget(graph);
                Err(error)
            }
        }
    }

    /// Launches the captured kernels once more, on the current stream.
    ///
    /// # Safety
    /// Every tensor the captured work reads or writes that was allocated outside the
    /// capture (a model's parameters, an optimizer's state, the inputs copied in) must
    /// still be alive: the replay reads and writes their memory, whatever holds it now.
    pub unsafe fn replay(&self) -> Result<()> {
        // SAFETY: a graph whose capture ended.
        check(
            unsafe { vit_cuda_graph_replay(self.handle) },
            "CUDA graph replay",
        )
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: the handle from vit_cuda_graph_capture_begin, freed once.
        unsafe { vit_cuda_graph_free(self.handle) }
    }
}

/// The C++ handles of `tensors`, borrowed: valid while the tensors live.
fn handles<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Vec<*mut c_void> {
    tensors.map(|t| t.as_ptr() as *mut c_void).collect()
}
