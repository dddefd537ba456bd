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

#[cfg(test)]
mod tests {
    use super::Ema;
    use crate::model::{ViTConfig, VisionTransformer};
    use tch::{nn, Device};

    /// The EMA starts as a copy of the trained weights, not as its own model's fresh
    /// initialisation (which, at a decay of 0.999 without warm-up, would stay in the
    /// average for thousands of steps; the training tests do not see it, as the warm-up's
    /// first update copies the weights anyway and a resume reads the saved average), and
    /// each update then moves every average 1 - decay of the way to its parameter.
    #[test]
    fn starts_as_the_weights_and_moves_one_minus_decay_towards_them() {
        let config = ViTConfig::tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = VisionTransformer::new(&vs.root(), &config).unwrap();
        let mut ema = Ema::new(&vs, &config, 0.75, false).unwrap();
        let weights = vs.variables();
        let averages = ema.vs.variables();
        assert_eq!(averages.len(), weights.len());
        for (name, weight) in &weights {
            assert!(averages[name].equal(weight), "{name}: not a copy");
        }
        tch::no_grad(|| {
            for weight in weights.values() {
                let _ = weight.shallow_clone().g_add_scalar_(1.0);
            }
        });
        ema.update(1);
        for (name, weight) in &weights {
            // The weight before + (1 - 0.75) of its step of 1.
            let expected = weight - 0.75;
            assert!(
                averages[name].allclose(&expected, 1e-6, 1e-6, false),
                "{name}: not a quarter of the way"
            );
        }
    }
}
