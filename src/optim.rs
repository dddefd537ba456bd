//! AdamW, gradient clipping and the learning-rate schedule, written out so that their state
//! can be saved for `--resume` (tch's C++ optimizers keep theirs out of reach).

use crate::ffi::{foreach_mul_, foreach_norm, fused_adamw, AdamWSlot, LearningRate};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

/// Parameters that get no weight decay besides the 1-D ones (biases, LayerNorm), as in
/// timm's `VisionTransformer.no_weight_decay()`.
const NO_DECAY: [&str; 2] = ["cls_token", "pos_embed"];

struct ParamState {
    name: String,
    param: Tensor,
    decay: bool,
    /// The moment estimates, each of `param`'s shape, kind and device.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// PyTorch's `torch.optim.AdamW` (betas 0.9/0.999, eps 1e-8, amsgrad off), with two
/// parameter groups: decay for weight matrices, none for 1-D tensors, cls_token, pos_embed.
pub struct AdamW {
    params: Vec<ParamState>,
    /// Update with libtorch's fused kernel (`fused=True`: one kernel per group on CUDA,
    /// where the loop launches ~10 per parameter); false runs PyTorch's single-tensor
    /// loop, op by op. Both agree to float rounding (tested).
    pub fused: bool,
    /// `step` as a float32 tensor of shape [] on the parameters' device, which the fused
    /// kernel reads: refilled from `step` before each `step`, advanced on the device by
    /// `step_on_device`.
    step_counter: Tensor,
    /// A libtorch optimizer over the same parameters, used only for its `zero_grad`, which
    /// sets the gradients to undefined (PyTorch's `set_to_none=True`) where
    /// `Tensor::zero_grad` would fill them with zeros: no zero fill before backward, and
    /// backward then writes each gradient instead of adding it to a zero tensor.
    grad_clearer: tch::COptimizer,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken so far (PyTorch's `state['step']`, shared by every parameter).
    step: i64,
}

impl AdamW {
    /// AdamW over every variable of `vs`: `weight_decay` for those of two or more
    /// dimensions other than `cls_token` and `pos_embed`, none for the others (biases,
    /// LayerNorm), as timm groups them.
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> Result<Self> {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let params = variables
            .into_iter()
            .map(|(name, param)| ParamState {
                decay: param.dim() >= 2 && !NO_DECAY.contains(&name.as_str()),
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
                name,
                param,
            })
            .collect::<Vec<ParamState>>();
        let mut grad_clearer = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)?;
        for state in &params {
            grad_clearer.add_parameters(&state.param, 0)?;
        }
        Ok(Self {
            params,
            fused: true,
            step_counter: Tensor::zeros([], (Kind::Float, vs.device())),
            grad_clearer,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
        })
    }

    /// Clears the gradients (sets them to undefined, as PyTorch's default `set_to_none`).
    pub fn zero_grad(&mut self) {
        self.grad_clearer.zero_grad().expect("libtorch zero_grad");
    }

    /// The parameters this optimizer updates (for gradient clipping).
    pub fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|state| &state.param)
    }

    /// One AdamW update with learning rate `lr`. Parameters without a gradient are left
    /// alone, as PyTorch does.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        if self.fused {
            // A fill from the host value: one asynchronous kernel, and always in step
            // with `self.step` (also after loop steps or a resume).
            let _ = self.step_counter.fill_(self.step as f64);
            // Fails only on tensors the kernel cannot take, which `new` never makes.
            self.fused_step(LearningRate::Value(lr))
                .expect("fused AdamW");
        } else {
            self.single_tensor_step(lr);
        }
    }

    /// `step` as a CUDA graph can capture it: the fused kernels, reading the learning rate
    /// from `lr` (float32 [] on the parameters' device) and advancing the step counter on
    /// the device, with nothing changed on the host. Each run of it (each replay) is one
    /// step, to be counted with `count_step`.
    pub fn step_on_device(&mut self, lr: &Tensor) -> Result<()> {
        ensure!(
            self.fused,
            "a step on the device needs the fused AdamW kernel"
        );
        let _ = tch::no_grad(|| self.step_counter.g_add_scalar_(1.0));
        self.fused_step(LearningRate::Tensor(lr))
    }

    /// Counts one run of `step_on_device` in `steps_taken`.
    pub fn count_step(&mut self) {
        self.step += 1;
    }

    /// Steps taken so far (PyTorch's `state['step']`, shared by every parameter).
    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    /// `torch.optim.AdamW(fused=True)`: the kernel once per weight-decay group, with the
    /// step number in `step_counter`.
    fn fused_step(&self, lr: LearningRate) -> Result<()> {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|state| state.param.grad()).collect();
            for decay in [true, false] {
                let slots: Vec<AdamWSlot> = self
                    .params
                    .iter()
                    .zip(&grads)
                    .filter(|(state, grad)| state.decay == decay && grad.defined())
                    .map(|(state, grad)| AdamWSlot {
                        param: &state.param,
                        grad,
                        exp_avg: &state.exp_avg,
                        exp_avg_sq: &state.exp_avg_sq,
                    })
                    .collect();
                let weight_decay = if decay { self.weight_decay } else { 0.0 };
                let (beta1, beta2, eps) = (self.beta1, self.beta2, self.eps);
                fused_adamw(
                    &slots,
                    &self.step_counter,
                    lr,
                    beta1,
                    beta2,
                    weight_decay,
                    eps,
                )?;
            }
            Ok(())
        })
    }

    /// PyTorch's single-tensor implementation (`foreach=False`), op by op.
    fn single_tensor_step(&mut self, lr: f64) {
        let bias_correction1 = 1.0 - self.beta1.powf(self.step as f64);
        let bias_correction2_sqrt = (1.0 - self.beta2.powf(self.step as f64)).sqrt();
        let step_size = lr / bias_correction1;
        tch::no_grad(|| {
            for state in &mut self.params {
                let grad = state.param.grad();
                if !grad.defined() {
                    continue;
                }
                if state.decay && self.weight_decay != 0.0 {
                    let _ = state.param.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = state.exp_avg.lerp_(&grad, 1.0 - self.beta1);
                let _ = state
                    .exp_avg_sq
                    .g_mul_scalar_(self.beta2)
                    .addcmul_(&grad, &(&grad * (1.0 - self.beta2)));
                // In place on one temporary: the same operations as PyTorch's
                // `(exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`.
                let mut denom = state.exp_avg_sq.sqrt();
                let _ = denom
                    .g_div_scalar_(bias_correction2_sqrt)
                    .g_add_scalar_(self.eps);
                let _ = state.param.addcdiv_(&(&state.exp_avg * -step_size), &denom);
            }
        });
    }

    /// The memory addresses of the tensors an update reads and writes (parameters, moments,
    /// step counter): a CUDA graph of the update replays on those, so a replay checks that
    /// it is given the optimizer it captured (whose tensors are then alive).
    pub fn tensor_addresses(&self) -> Vec<usize> {
        self.params
            .iter()
            .flat_map(|state| [&state.param, &state.exp_avg, &state.exp_avg_sq])
            .chain([&self.step_counter])
            .map(|tensor| tensor.data_ptr() as usize)
            .collect()
    }

    /// The moment estimates as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`), each of
    /// its parameter's shape.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for state in &self.params {
            out.insert(
                format!("exp_avg.{}", state.name),
                state.exp_avg.shallow_clone(),
            );
            out.insert(
                format!("exp_avg_sq.{}", state.name),
                state.exp_avg_sq.shallow_clone(),
            );
        }
        out
    }

    /// Restores what `state_tensors` saved (each of its parameter's shape, checked), and
    /// the step count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: i64) -> Result<()> {
        self.step = step;
        tch::no_grad(|| {
            let _ = self.step_counter.fill_(step as f64);
            for state in &mut self.params {
                for (prefix, target) in [
                    ("exp_avg", &mut state.exp_avg),
                    ("exp_avg_sq", &mut state.exp_avg_sq),
                ] {
                    let key = format!("{prefix}.{}", state.name);
                    let saved = tensors
                        .get(&key)
                        .with_context(|| format!("no `{key}` in the optimizer state"))?;
                    ensure!(saved.size() == target.size(), "`{key}` has the wrong shape");
                    target.copy_(saved);
                }
            }
            Ok(())
        })
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (multi-tensor kernels, as PyTorch's CUDA default).
/// Returns the norm before clipping, float [] left on the device (reading it would force a
/// host-device synchronisation); on the CPU when no parameter has a gradient.
pub fn clip_grad_norm<'a>(params: impl Iterator<Item = &'a Tensor>, max_norm: f64) -> Tensor {
    let grads: Vec<Tensor> = params.map(|p| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        // As PyTorch: no gradient has a norm of 0 (and the multi-tensor norm needs one).
        return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    }
    let norms = foreach_norm(&grads).expect("foreach norm of the gradients");
    let total = Tensor::stack(&norms, 0).norm();
    // PyTorch's `max_norm / (total + 1e-6)` is `Tensor.__rtruediv__`: a reciprocal, then a
    // product (two roundings, which a division would not match for max_norm != 1).
    let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
    tch::no_grad(|| foreach_mul_(&grads, &coef)).expect("foreach mul of the gradients");
    total
}

/// The learning rate of step `step` (counted from 0): a linear warm-up that reaches
/// `base_lr` at step `warmup_steps - 1`, then a cosine decay from `base_lr` to 0 at
/// `total_steps`, updated every step. The cosine spans the steps after the warm-up, as
/// timm's `CosineLRScheduler` with `warmup_prefix=True` (its default spans the whole run,
/// from step 0); unlike timm's warm-up (from `warmup_lr_init`, 0 by default), step 0
/// already gets base_lr / warmup_steps: no step is spent at a learning rate of 0.
/// `bench/train_pytorch.py` uses this formula.
pub fn learning_rate(base_lr: f64, step: usize, warmup_steps: usize, total_steps: usize) -> f64 {
    if step < warmup_steps {
        return base_lr * (step + 1) as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps).max(1);
    let progress = ((step - warmup_steps) as f64 / decay_steps as f64).min(1.0);
    0.5 * base_lr * (1.0 + (std::f64::consts::PI * progress).cos())
}
