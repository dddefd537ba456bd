//! `--ema`: an exponential moving average of the weights.

use crate::model::{ViTConfig, VisionTransformer};
use anyhow::Result;
use tch::{nn, Tensor};

/// An exponential moving average of a model's weights (timm's `ModelEmaV2`), a model of
/// its own that is evaluated and saved beside the trained one.
pub(super) struct Ema {
    pub(super) vs: nn::VarStore,
    pub(super) model: VisionTransformer,
    /// (average, parameter) pairs.
    pub(super) pairs: Vec<(Tensor, Tensor)>,
    pub(super) decay: f64,
}

impl Ema {
    /// Starts from a copy of `source`'s weights.
    pub(super) fn new(source: &nn::VarStore, config: &ViTConfig, decay: f64) -> Result<Self> {
        let mut vs = nn::VarStore::new(source.device());
        let model = VisionTransformer::new(&vs.root(), config)?;
        vs.copy(source)?;
        vs.freeze();
        let averages = vs.variables();
        let pairs = source
            .variables()
            .into_iter()
            .map(|(name, param)| (averages[&name].shallow_clone(), param))
            .collect();
        Ok(Self {
            vs,
            model,
            pairs,
            decay,
        })
    }

    /// average = decay * average + (1 - decay) * parameter, for every parameter.
    pub(super) fn update(&mut self) {
        tch::no_grad(|| {
            for (average, param) in &mut self.pairs {
                let _ = average.lerp_(param, 1.0 - self.decay);
            }
        });
    }
}
