//! One optimisation step, as `vit train` (and `vit bench`, and a CUDA graph) runs it: the
//! batch augmented on the device, forward, loss, backward, clipping, AdamW.

use super::Regularization;
use crate::cli::Precision;
use crate::data::{augment, mix, transforms, Split};
use crate::ffi::autocast;
use crate::model::{ViTConfig, VisionTransformer};
use crate::optim::{clip_grad_norm, AdamW};
use tch::{nn::ModuleT, Kind, Reduction, Tensor};

/// The loss the model is trained on: cross-entropy with label smoothing.
/// logits float [B, num_classes], labels int64 `[B]` -> float [].
pub fn training_loss(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, label_smoothing)
}

/// What a single optimisation step needs besides the model, the batch and the lr.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOptions {
    pub label_smoothing: f64,
    /// Global gradient-norm limit (0 = off).
    pub clip_grad: f64,
    pub precision: Precision,
}

/// A training batch, augmented and ready for the model; or, made `From` a dataset's
/// `Split`, as the dataset holds it (the input a CUDA graph augments itself).
pub struct TrainBatch {
    /// float [B, C, image_size, image_size], normalized (uint8 [B, C, H, W] as the dataset
    /// holds it, before augmentation).
    pub images: Tensor,
    /// int64 `[B]`: the class of each image before mixing (train accuracy is measured
    /// against these, also when MixUp/CutMix blend in a second image).
    pub labels: Tensor,
    /// float [B, num_classes] MixUp/CutMix targets (label smoothing included), when mixing.
    pub soft_targets: Option<Tensor>,
}

impl TrainBatch {
    /// Augments `images` (uint8 [B, C, H, W], with int64 `labels` `[B]`) for a step of
    /// `epoch` (0-based) as `regularization` says: the notebook's crop and flip, or the
    /// strong pipeline, then MixUp/CutMix.
    pub fn new(
        images: &Tensor,
        labels: Tensor,
        config: &ViTConfig,
        regularization: &Regularization,
        label_smoothing: f64,
        epoch: usize,
    ) -> Self {
        let images = match &regularization.augment {
            Some(augment) => augment::strong_train_transform(images, config.image_size, augment),
            None => transforms::train_transform(images, config.image_size),
        };
        let (images, soft_targets) = match &regularization.mix {
            Some(mix) if regularization.mixes_in(epoch) => {
                let (images, targets) =
                    mix::mix(&images, &labels, config.num_classes, mix, label_smoothing);
                (images, Some(targets))
            }
            // Past --mix-off-epoch: the same soft-target loss on each image's own label, as
            // timm's (and a CUDA graph's step keeps its inputs).
            Some(_) => {
                let unmixed = Tensor::ones([1], (Kind::Float, images.device()));
                let targets =
                    mix::mixup_target(&labels, config.num_classes, &unmixed, label_smoothing);
                (images, Some(targets))
            }
            None => (images, None),
        };
        Self {
            images,
            labels,
            soft_targets,
        }
    }

    /// Another handle on the same tensors.
    pub fn shallow_clone(&self) -> Self {
        Self {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
            soft_targets: self.soft_targets.as_ref().map(Tensor::shallow_clone),
        }
    }
}

impl From<Split> for TrainBatch {
    /// A batch as the dataset holds it: the images not augmented yet, no soft targets.
    fn from(split: Split) -> Self {
        Self {
            images: split.images,
            labels: split.labels,
            soft_targets: None,
        }
    }
}

/// What one step leaves on the device (nothing here waits for the GPU).
pub struct StepOutput {
    /// The batch's mean training loss, float [].
    pub loss: Tensor,
    /// How many of the batch's predictions were right, int64 [].
    pub correct: Tensor,
    /// The global gradient norm before clipping (when clipping is on), float [].
    pub grad_norm: Option<Tensor>,
}

/// One optimisation step: forward in training mode, cross-entropy (label-smoothed, or on
/// the soft targets of a mixed batch), backward, gradient clipping, AdamW.
pub fn train_step(
    model: &VisionTransformer,
    optimizer: &mut AdamW,
    batch: &TrainBatch,
    lr: f64,
    options: StepOptions,
) -> StepOutput {
    optimizer.zero_grad();
    let update = |optimizer: &mut AdamW| optimizer.step(lr);
    forward_backward_update(model, optimizer, batch, options, update, &mut || {})
}

/// A step from cleared gradients on: forward, loss, backward and clipping, then `update`
/// (the AdamW update). This is what a CUDA graph captures (`cuda_graph.rs`), with an
/// update that reads the learning rate on the device. `lap` runs after each of the first
/// three phases (`vit bench --phases` times them apart with it).
pub fn forward_backward_update(
    model: &VisionTransformer,
    optimizer: &mut AdamW,
    batch: &TrainBatch,
    options: StepOptions,
    update: impl FnOnce(&mut AdamW),
    lap: &mut dyn FnMut(),
) -> StepOutput {
    let (logits, loss) = forward_loss(model, batch, options);
    lap();
    loss.backward();
    lap();
    let grad_norm = clip_gradients(optimizer, options);
    lap();
    update(optimizer);
    StepOutput {
        loss: loss.detach(),
        correct: count_correct(&logits, &batch.labels),
        grad_norm,
    }
}

/// The step's forward half: logits float [B, num_classes] and the loss, float [].
fn forward_loss(
    model: &VisionTransformer,
    batch: &TrainBatch,
    options: StepOptions,
) -> (Tensor, Tensor) {
    let logits = autocast(options.precision, batch.images.device(), || {
        model.forward_t(&batch.images, true)
    })
    .to_kind(Kind::Float);
    let loss = match &batch.soft_targets {
        Some(targets) => mix::soft_target_cross_entropy(&logits, targets),
        None => training_loss(&logits, &batch.labels, options.label_smoothing),
    };
    (logits, loss)
}

/// Clips the gradients when `options` says so; the norm before clipping (float []).
fn clip_gradients(optimizer: &AdamW, options: StepOptions) -> Option<Tensor> {
    (options.clip_grad > 0.0).then(|| clip_grad_norm(optimizer.parameters(), options.clip_grad))
}

/// How many rows of `logits` [B, num_classes] pick their label (`labels`, int64 `[B]`):
/// int64 [].
fn count_correct(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Int64)
}
