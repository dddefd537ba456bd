//! `--ema`: an exponential moving average of the weights.

use crate::ffi::foreach_lerp_;
use crate::model::{ViTConfig, VisionTransformer};
use anyhow::Result;
use tch::{nn, Tensor};

/// An exponential moving average of a model's weights (timm's `ModelEmaV2`), a model of
/// its own that is evaluated and saved beside the trained one.
pub(super) struct Ema {
    pub(super) vs: nn::VarStore,
    pub(super) model: VisionTransformer,
    /// The averages and the parameters they follow, in the same order.
    averages: Vec<Tensor>,
    params: Vec<Tensor>,
    pub(super) decay: f64,
}

impl Ema {
    /// Starts from a copy of `source`'s weights.
    pub(super) fn new(source: &nn::VarStore, config: &ViTConfig, decay: f64) -> Result<Self> {
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
        })
    }

    /// average = decay * average + (1 - decay) * parameter, for every parameter, in one
    /// multi-tensor call.
    pub(super) fn update(&mut self) {
        tch::no_grad(|| foreach_lerp_(&self.averages, &self.params, 1.0 - self.decay))
            .expect("EMA tensors match their parameters");
    }
}
