//! MixUp and CutMix as timm's `Mixup` computes them, as batched tensor ops with soft
//! targets, and the soft-target cross-entropy to train on them.
//!
//! Every image is paired with its mirror in the batch (`images.flip(0)`), as timm does.
//! The λ of CutMix is corrected to the pasted area: 1 - (box area) / (H·W). All
//! randomness (Beta draws through two Gamma draws, the switch, the box) comes from
//! libtorch's generator, on the batch's device, with no host round trip.

use super::transforms::per_image;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Whether one λ (and one choice of MixUp or CutMix) serves the whole batch, as timm's
/// default `mode='batch'`, or every image draws its own (`mode='elem'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MixMode {
    #[default]
    Batch,
    Elem,
}

/// timm's `Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, mode)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixConfig {
    /// Beta(α, α) of MixUp's λ; 0 disables MixUp.
    pub mixup_alpha: f64,
    /// Beta(α, α) of CutMix's λ; 0 disables CutMix.
    pub cutmix_alpha: f64,
    /// Probability of mixing at all (per batch or per image).
    pub prob: f64,
    /// Probability of CutMix rather than MixUp when both are enabled.
    pub switch_prob: f64,
    pub mode: MixMode,
}

impl Default for MixConfig {
    /// DeiT's recipe: MixUp α = 0.8, CutMix α = 1.0, always mixing, half of the batches
    /// CutMix, one λ per batch.
    fn default() -> Self {
        Self {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            mode: MixMode::Batch,
        }
    }
}

impl MixConfig {
    /// Whether [`mix`] can change anything.
    pub fn is_active(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }
}

/// Beta(α, α) drawn `draws` times (double `[draws]` on `device`), each as X / (X + Y) of two
/// Gamma(α) draws.
fn sample_beta(alpha: f64, draws: i64, device: Device) -> Tensor {
    let shape = Tensor::full([draws], alpha, (Kind::Double, device));
    let x = shape.internal_standard_gamma();
    let y = shape.internal_standard_gamma();
    let sum = &x + &y;
    // Both draws underflow to 0 only for tiny α; call that λ = 1/2.
    (&x / &sum).where_self(&sum.gt(0.0), &x.full_like(0.5))
}

/// timm's `mixup_target`: smoothed one-hot targets of `labels` (int64 `[B]`) mixed with
/// those of the flipped batch, `lam * y(labels) + (1 - lam) * y(labels.flip(0))`, with
/// per-image `lam` `[B]` (or one for all, `[1]`). Float [B, num_classes]; every row sums
/// to 1.
pub fn mixup_target(labels: &Tensor, num_classes: i64, lam: &Tensor, smoothing: f64) -> Tensor {
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let one_hot = |l: &Tensor| l.one_hot(num_classes).to_kind(Kind::Float) * (on - off) + off;
    let lam = lam
        .to_device(labels.device())
        .to_kind(Kind::Float)
        .view([-1, 1]);
    one_hot(labels) * &lam + one_hot(&labels.flip([0])) * (1.0 - &lam)
}

/// MixUp or CutMix of a normalized float batch [B, C, H, W] with int64 labels `[B]`: the mixed
/// batch (the same shape and kind) and its soft targets (float [B, num_classes], smoothed
/// by `label_smoothing`).
///
/// As timm's `Mixup`: with both α > 0, CutMix is chosen with probability `switch_prob`;
/// λ ~ Beta(α, α) of the chosen op, and with probability 1 - `prob` there is no mixing
/// (λ = 1). MixUp gives `λ x + (1 - λ) x.flip(0)`; CutMix pastes from `x.flip(0)` a box of
/// sides `int(H sqrt(1-λ))`, `int(W sqrt(1-λ))` centred at a uniform pixel, clipped to the
/// image (timm's `rand_bbox`), and λ becomes the share of the image not pasted over.
pub fn mix(
    images: &Tensor,
    labels: &Tensor,
    num_classes: i64,
    config: &MixConfig,
    label_smoothing: f64,
) -> (Tensor, Tensor) {
    let (b, _, h, w) = images.size4().expect("mix expects [B,C,H,W]");
    // One λ (and one choice of op) for the batch, or one per image.
    let draws = match config.mode {
        MixMode::Batch => 1,
        MixMode::Elem => b,
    };
    let (use_cutmix, lam) = draw_lambda(config, draws, images.device());

    let flipped = images.flip([0]);
    let lam_img = per_image(&lam.to_kind(images.kind()));
    let mixed = images * &lam_img + &flipped * (1.0 - &lam_img);

    let (in_box, lam_cut) = cutmix_box(&lam, h, w);
    let cut = flipped.where_self(&in_box, images);

    let out = cut.where_self(&per_image(&use_cutmix), &mixed);
    let lam = lam_cut.where_self(&use_cutmix, &lam);
    let targets = mixup_target(
        labels,
        num_classes,
        &lam.expand([b], false),
        label_smoothing,
    );
    (out, targets)
}

/// `draws` choices of CutMix over MixUp (bool `[draws]` on `device`) and their λ (double
/// `[draws]`; 1 where there is no mixing), drawn in this order: the switch, the Beta draws
/// (CutMix's before MixUp's when both are enabled), then whether to mix at all.
fn draw_lambda(config: &MixConfig, draws: i64, device: Device) -> (Tensor, Tensor) {
    let double_options = (Kind::Double, device);
    let (mixup, cutmix) = (config.mixup_alpha > 0.0, config.cutmix_alpha > 0.0);
    let use_cutmix = if mixup && cutmix {
        Tensor::rand([draws], double_options).lt(config.switch_prob)
    } else {
        Tensor::full([draws], cutmix as i64, (Kind::Bool, device))
    };
    let lam_mix = match (mixup, cutmix) {
        (true, true) => sample_beta(config.cutmix_alpha, draws, device)
            .where_self(&use_cutmix, &sample_beta(config.mixup_alpha, draws, device)),
        (true, false) => sample_beta(config.mixup_alpha, draws, device),
        (false, true) => sample_beta(config.cutmix_alpha, draws, device),
        (false, false) => Tensor::ones([draws], double_options),
    };
    let apply = Tensor::rand([draws], double_options).lt(config.prob);
    let lam = lam_mix.where_self(&apply, &lam_mix.ones_like());
    (use_cutmix, lam)
}

/// CutMix's box for each λ of `lam` (double `[draws]`) in an `h` x `w` image, as timm's
/// `rand_bbox`: cut_rat = sqrt(1 - λ), a box of int(H cut_rat) x int(W cut_rat) centred at
/// (randint(H), randint(W)), half-sides floor-divided, clipped. The box as a mask (bool
/// [draws, 1, h, w]) and λ corrected to its area, 1 - (box area) / (H·W) (double
/// `[draws]`).
fn cutmix_box(lam: &Tensor, h: i64, w: i64) -> (Tensor, Tensor) {
    let (draws, device) = (lam.size()[0], lam.device());
    let cut_rat = (lam.neg() + 1.0).clamp_min(0.0).sqrt();
    let half_h = (&cut_rat * h as f64).floor().divide_scalar(2.0).floor();
    let half_w = (&cut_rat * w as f64).floor().divide_scalar(2.0).floor();
    let centre_y = Tensor::randint(h, [draws], (Kind::Int64, device)).to_kind(Kind::Double);
    let centre_x = Tensor::randint(w, [draws], (Kind::Int64, device)).to_kind(Kind::Double);
    let (height, width) = (h as f64, w as f64);
    let top = (&centre_y - &half_h).clamp(0.0, height);
    let bottom = (&centre_y + &half_h).clamp(0.0, height);
    let left = (&centre_x - &half_w).clamp(0.0, width);
    let right = (&centre_x + &half_w).clamp(0.0, width);
    let lam_cut: Tensor = ((&bottom - &top) * (&right - &left) / (height * width)).neg() + 1.0;
    let in_box = super::augment::box_mask(&top, &bottom, &left, &right, h, w);
    (in_box, lam_cut)
}

/// timm's `SoftTargetCrossEntropy`: the batch mean of `-sum(targets * log_softmax(logits))`
/// over classes, computed in float32. logits [B, num_classes], targets float
/// [B, num_classes] -> float [].
pub fn soft_target_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let log_probs = logits.log_softmax(-1, Kind::Float);
    (-(targets.to_kind(Kind::Float) * log_probs))
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
        .mean(Kind::Float)
}
