//! `--ema`: an exponential moving average of the weights.

use crate::ffi::foreach_lerp_;
use crate::model::{ViTConfig, VisionTransformer};
use anyhow::Result;
use tch::{nn, Tensor};

/// The EMA's decay at the update after optimizer step `step` (1-based): `decay`, or with
/// `warmup` timm's `ModelEmaV3` warm-up, `min(decay, 1 - (1 + t)^(-2/3))` with t = step -
/// 1 (0 at the first update, which copies the weights).
pub fn ema_decay(decay: f64, step: usize, warmup: bool) -> f64 {
    let t = step.saturating_sub(1) as f64;
    match warmup {
        false => decay,
        true => decay.min(1.0 - (1.0 + t).powf(-2.0 / 3.0)),
    }
}

/// An exponential moving average of a model's weights (timm's `ModelEmaV2`, or with
/// `warmup` `ModelEmaV3`'s warm-up), a model of its own that is evaluated and saved beside
/// the trained one.
pub(super) struct Ema {
    pub(super) vs: nn::VarStore,
    pub(super) model: VisionTransformer,
    /// The averages and the parameters they follow, in the same order (each average of its
    /// parameter's shape).
    averages: Vec<Tensor>,
    params: Vec<Tensor>,
    decay: f64,
    warmup: bool,
}

impl Ema {
    /// Starts from a copy of `source`'s weights.
    pub(super) fn new(
        source: &nn::VarStore,
        config: &ViTConfig,
        decay: f64,
        warmup: bool,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(source.device());
        let model = VisionTransformer::new(&vs.root(), config)?;
        vs.copy(source)?;
        vs.freeze();
        let by_name = vs.variables();
        let (averages, params) = source
            .variables()
            .into_iter()
            .map(|(name, param)| (by_name[&name].shallow_clone(), param))
            .unzip();
        Ok(Self {
            vs,
            model,
            averages,
            params,
            decay,
            warmup,
        })
    }

    /// After optimizer step `step` (1-based, counted over the run): average = decay *
    /// average + (1 - decay) * parameter, for every parameter, in one multi-tensor call.
    pub(super) fn update(&mut self, step: usize) {
        let decay = ema_decay(self.decay, step, self.warmup);
        tch::no_grad(|| foreach_lerp_(&self.averages, &self.params, 1.0 - decay))
            .expect("EMA tensors match their parameters");
    }
}
