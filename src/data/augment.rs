//! Strong augmentation as batched tensor ops: RandAugment, AutoAugment (CIFAR-10 policy),
//! random erasing, and [`strong_train_transform`], the per-batch entry point of the
//! `strong` recipe.
//!
//! Every op takes uint8 [B, 3, H, W] on any device and returns uint8 of the same shape, so the
//! ops compose with [`transforms::random_crop`] and [`transforms::random_horizontal_flip`]
//! before [`transforms::to_float01`] and [`transforms::normalize`]. Internally they compute
//! in float and convert back the way torchvision's tensor backend does for uint8 images:
//! the blends (brightness, contrast, color, sharpness) and autocontrast clamp to [0, 255]
//! and *truncate* (`.to(torch.uint8)`), the grid samplers (rotate, shear, translate) and
//! the sharpness blur *round* (torchvision's `_cast_squeeze_out`). Following torchvision
//! rather than rounding everywhere keeps the golden checks against it within ±1 level.
//!
//! Each image draws its own ops and signs: for every op kind the op runs on the whole
//! batch with per-image magnitudes, and `where` keeps it for the images that drew it; the
//! geometric ops of one step share a single per-image [B, 2, 3] affine grid and one
//! `grid_sampler` call. There is no per-image loop and no host round trip, and all
//! randomness comes from libtorch's generator (`tch::manual_seed` reproduces a batch).
//!
//! Magnitudes follow torchvision's `_apply_op` units: shear is the shear factor (tan of the
//! angle), translate is pixels (truncated to an integer), rotate is degrees
//! (counter-clockwise), brightness/color/contrast/sharpness are `factor - 1`, posterize is
//! bits kept, solarize is the threshold (a pixel `>= threshold` is inverted).

use super::transforms::{self, device_constants, per_image};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// One augmentation op, as torchvision's `_apply_op` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AugOp {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
    Invert,
}

impl AugOp {
    /// torchvision's `RandAugment` op list, in its order.
    pub const RANDAUGMENT: [AugOp; 14] = [
        AugOp::Identity,
        AugOp::ShearX,
        AugOp::ShearY,
        AugOp::TranslateX,
        AugOp::TranslateY,
        AugOp::Rotate,
        AugOp::Brightness,
        AugOp::Color,
        AugOp::Contrast,
        AugOp::Sharpness,
        AugOp::Posterize,
        AugOp::Solarize,
        AugOp::AutoContrast,
        AugOp::Equalize,
    ];

    /// Every op: RandAugment's, and AutoAugment's `Invert`.
    pub fn all() -> impl Iterator<Item = AugOp> {
        Self::RANDAUGMENT.into_iter().chain([AugOp::Invert])
    }

    /// The op's code in the per-image op tensors of [`apply_ops`].
    pub fn code(self) -> i64 {
        self as i64
    }

    /// Rotate, shear and translate: ops that resample through an affine grid.
    fn is_geometric(self) -> bool {
        matches!(
            self,
            AugOp::ShearX | AugOp::ShearY | AugOp::TranslateX | AugOp::TranslateY | AugOp::Rotate
        )
    }

    /// torchvision's `_augmentation_space(num_bins, (height, width))`: the (unsigned)
    /// magnitude of bin `bin`, and whether the op draws a random sign. Ops without a
    /// magnitude (identity, autocontrast, equalize, invert) give 0.
    pub fn magnitude(self, bin: i64, num_bins: i64, height: i64, width: i64) -> (f64, bool) {
        let steps = (num_bins - 1).max(1) as f64;
        let t = bin as f64 / steps;
        // torch.linspace(0, max, num_bins)[bin], as float32.
        let lin = |max: f64| (max * t) as f32 as f64;
        match self {
            AugOp::ShearX | AugOp::ShearY => (lin(0.3), true),
            AugOp::TranslateX => (lin(150.0 / 331.0 * width as f64), true),
            AugOp::TranslateY => (lin(150.0 / 331.0 * height as f64), true),
            AugOp::Rotate => (lin(30.0), true),
            AugOp::Brightness | AugOp::Color | AugOp::Contrast | AugOp::Sharpness => {
                (lin(0.9), true)
            }
            // 8 - round(arange(num_bins) / ((num_bins - 1) / 4)); no ties occur for 10 or 31 bins.
            AugOp::Posterize => (8.0 - (bin as f64 / (steps / 4.0)).round(), false),
            // torch.linspace(255, 0, num_bins)[bin]
            AugOp::Solarize => (((255.0 - 255.0 * t) as f32) as f64, false),
            AugOp::Identity | AugOp::AutoContrast | AugOp::Equalize | AugOp::Invert => (0.0, false),
        }
    }
}

/// Resampling of the geometric ops (torchvision's `InterpolationMode`; its augmentations
/// default to nearest). Pixels from outside the image are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Interpolation {
    #[default]
    Nearest,
    Bilinear,
}

impl Interpolation {
    fn grid_sampler_mode(self) -> i64 {
        match self {
            Interpolation::Bilinear => 0,
            Interpolation::Nearest => 1,
        }
    }
}

/// torchvision's `RandAugment(num_ops, magnitude, num_magnitude_bins)`, with the op list
/// made explicit (default: [`AugOp::RANDAUGMENT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandAugment {
    /// Ops applied one after another to every image (N).
    pub num_ops: i64,
    /// Magnitude bin (M), 0..num_magnitude_bins.
    pub magnitude: i64,
    pub num_magnitude_bins: i64,
    /// The ops each step draws from, uniformly.
    pub ops: Vec<AugOp>,
}

impl Default for RandAugment {
    /// torchvision's defaults: N=2, M=9, 31 bins, its 14 ops.
    fn default() -> Self {
        Self {
            num_ops: 2,
            magnitude: 9,
            num_magnitude_bins: 31,
            ops: AugOp::RANDAUGMENT.to_vec(),
        }
    }
}

/// An automatic augmentation policy, per image of a uint8 batch (the strong recipe's is
/// AutoAugment's; `--augment-policy` chooses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Policy {
    RandAugment(RandAugment),
    /// torchvision's `AutoAugment(AutoAugmentPolicy.CIFAR10)`.
    AutoAugmentCifar10,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::RandAugment(RandAugment::default())
    }
}

/// torchvision's `RandomErasing(p, scale, ratio, value)` (value a constant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomErasing {
    /// Probability that an image gets a rectangle erased.
    pub p: f64,
    /// Range of the erased area as a fraction of the image.
    pub scale: (f64, f64),
    /// Range of the rectangle's aspect ratio (height / width), drawn log-uniformly.
    pub ratio: (f64, f64),
    /// What the rectangle is filled with (0 on a normalized batch is the dataset mean).
    pub value: f64,
}

impl Default for RandomErasing {
    /// p = 0.25 (DeiT's `reprob`), torchvision's scale (0.02, 0.33), ratio (0.3, 3.3),
    /// value 0.
    fn default() -> Self {
        Self {
            p: 0.25,
            scale: (0.02, 0.33),
            ratio: (0.3, 3.3),
            value: 0.0,
        }
    }
}

/// The strong recipe's image pipeline, see [`strong_train_transform`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// `RandomCrop(H, padding)` padding (0 = no crop).
    pub crop_padding: i64,
    /// `RandomHorizontalFlip(p)` probability.
    pub flip_prob: f64,
    /// RandAugment or AutoAugment, or none.
    pub policy: Option<Policy>,
    /// Resampling of the policy's geometric ops.
    pub interpolation: Interpolation,
    /// Random erasing of the normalized batch, or none.
    pub erasing: Option<RandomErasing>,
}

impl Default for AugmentConfig {
    /// Crop (pad 4) and flip as in the notebook, RandAugment N=2 M=9 (nearest), random
    /// erasing with p = 0.25.
    fn default() -> Self {
        Self {
            crop_padding: transforms::CROP_PADDING,
            flip_prob: transforms::FLIP_PROBABILITY,
            policy: Some(Policy::default()),
            interpolation: Interpolation::Nearest,
            erasing: Some(RandomErasing::default()),
        }
    }
}

/// The strong recipe's training transform of one batch: uint8 [B, 3, H, W] on any device ->
/// float [B, 3, image_size, image_size], normalized.
///
/// crop -> flip -> RandAugment/AutoAugment (uint8, at the stored size) -> the test
/// transform ([0, 1] floats, resize, normalize) -> random erasing (torchvision's constant
/// fill, applied to the normalized floats as timm applies its erasing, so `value = 0` is
/// the dataset mean).
pub fn strong_train_transform(images: &Tensor, image_size: i64, config: &AugmentConfig) -> Tensor {
    let images = transforms::random_crop(images, config.crop_padding);
    let images = transforms::random_horizontal_flip(&images, config.flip_prob);
    let images = match &config.policy {
        Some(policy) => apply_policy(&images, policy, config.interpolation),
        None => images,
    };
    let images = transforms::test_transform(&images, image_size);
    match &config.erasing {
        Some(erasing) if erasing.p > 0.0 => random_erasing(&images, erasing),
        _ => images,
    }
}

/// RandAugment or AutoAugment on a uint8 batch [B, 3, H, W] -> the same shape.
fn apply_policy(images: &Tensor, policy: &Policy, interpolation: Interpolation) -> Tensor {
    match policy {
        Policy::RandAugment(config) => rand_augment(images, config, interpolation),
        Policy::AutoAugmentCifar10 => auto_augment_cifar10(images, interpolation),
    }
}

/// torchvision's `RandAugment` for every image of a uint8 batch [B, 3, H, W] (-> the same
/// shape): each of `num_ops` steps draws, per image, one op of `config.ops` uniformly and
/// (for signed ops) a sign.
pub fn rand_augment(images: &Tensor, config: &RandAugment, interpolation: Interpolation) -> Tensor {
    if config.ops.is_empty() || config.num_ops <= 0 {
        return images.shallow_clone();
    }
    let (b, _, h, w) = images.size4().expect("rand_augment expects [B,3,H,W]");
    let device = images.device();
    let codes: Vec<f64> = config.ops.iter().map(|op| op.code() as f64).collect();
    let (magnitudes, signed): (Vec<f64>, Vec<f64>) = config
        .ops
        .iter()
        .map(|op| {
            let (magnitude, is_signed) =
                op.magnitude(config.magnitude, config.num_magnitude_bins, h, w);
            (magnitude, f64::from(u8::from(is_signed)))
        })
        .unzip();
    let codes = device_constants(&codes, device).to_kind(Kind::Int64);
    let magnitudes = device_constants(&magnitudes, device);
    let signed = device_constants(&signed, device).gt(0.0);
    let mut augmented = images.shallow_clone();
    for _ in 0..config.num_ops {
        let choice = Tensor::randint(config.ops.len() as i64, [b], (Kind::Int64, device));
        // torchvision: `if signed and torch.randint(2, (1,)): magnitude *= -1.0`.
        let flip = Tensor::randint(2, [b], (Kind::Int64, device)).eq(1);
        let kinds = codes.index_select(0, &choice);
        let magnitude = magnitudes.index_select(0, &choice);
        let negate = signed.index_select(0, &choice).logical_and(&flip);
        let magnitude = (-&magnitude).where_self(&negate, &magnitude);
        augmented = apply_ops(&augmented, &kinds, &magnitude, &config.ops, interpolation);
    }
    augmented
}

/// One op of an AutoAugment sub-policy: (op, probability, magnitude bin of 10).
type PolicyOp = (AugOp, f64, Option<i64>);

/// torchvision's `AutoAugmentPolicy.CIFAR10` sub-policies.
pub const CIFAR10_POLICY: [(PolicyOp, PolicyOp); 25] = {
    use AugOp::*;
    [
        ((Invert, 0.1, None), (Contrast, 0.2, Some(6))),
        ((Rotate, 0.7, Some(2)), (TranslateX, 0.3, Some(9))),
        ((Sharpness, 0.8, Some(1)), (Sharpness, 0.9, Some(3))),
        ((ShearY, 0.5, Some(8)), (TranslateY, 0.7, Some(9))),
        ((AutoContrast, 0.5, None), (Equalize, 0.9, None)),
        ((ShearY, 0.2, Some(7)), (Posterize, 0.3, Some(7))),
        ((Color, 0.4, Some(3)), (Brightness, 0.6, Some(7))),
        ((Sharpness, 0.3, Some(9)), (Brightness, 0.7, Some(9))),
        ((Equalize, 0.6, None), (Equalize, 0.5, None)),
        ((Contrast, 0.6, Some(7)), (Sharpness, 0.6, Some(5))),
        ((Color, 0.7, Some(7)), (TranslateX, 0.5, Some(8))),
        ((Equalize, 0.3, None), (AutoContrast, 0.4, None)),
        ((TranslateY, 0.4, Some(3)), (Sharpness, 0.2, Some(6))),
        ((Brightness, 0.9, Some(6)), (Color, 0.2, Some(8))),
        ((Solarize, 0.5, Some(2)), (Invert, 0.0, None)),
        ((Equalize, 0.2, None), (AutoContrast, 0.6, None)),
        ((Equalize, 0.2, None), (Equalize, 0.6, None)),
        ((Color, 0.9, Some(9)), (Equalize, 0.6, None)),
        ((AutoContrast, 0.8, None), (Solarize, 0.2, Some(8))),
        ((Brightness, 0.1, Some(3)), (Color, 0.7, Some(0))),
        ((Solarize, 0.4, Some(5)), (AutoContrast, 0.9, None)),
        ((TranslateY, 0.9, Some(9)), (TranslateY, 0.7, Some(9))),
        ((AutoContrast, 0.9, None), (Solarize, 0.8, Some(3))),
        ((Equalize, 0.8, None), (Invert, 0.1, None)),
        ((TranslateY, 0.7, Some(9)), (AutoContrast, 0.9, None)),
    ]
};

/// torchvision's `AutoAugment(AutoAugmentPolicy.CIFAR10)` for every image of a uint8 batch
/// [B, 3, H, W] (-> the same shape): each image draws a sub-policy, and each of its two ops
/// applies with the op's probability, with magnitudes from 10 bins and a random sign.
pub fn auto_augment_cifar10(images: &Tensor, interpolation: Interpolation) -> Tensor {
    let (b, _, h, w) = images.size4().expect("auto_augment expects [B,3,H,W]");
    let device = images.device();
    let n = CIFAR10_POLICY.len() as i64;
    let policy_id = Tensor::randint(n, [b], (Kind::Int64, device));
    let probs = Tensor::rand([b, 2], (Kind::Double, device));
    let signs = Tensor::randint(2, [b, 2], (Kind::Int64, device));
    let mut augmented = images.shallow_clone();
    for step in 0..2 {
        let ops: Vec<PolicyOp> = CIFAR10_POLICY
            .iter()
            .map(|pair| if step == 0 { pair.0 } else { pair.1 })
            .collect();
        let table = |f: &dyn Fn(&PolicyOp) -> f64| {
            let values: Vec<f64> = ops.iter().map(f).collect();
            device_constants(&values, device).index_select(0, &policy_id)
        };
        let code = table(&|op| op.0.code() as f64).to_kind(Kind::Int64);
        let p = table(&|op| op.1);
        let magnitude = table(&|op| op.2.map_or(0.0, |bin| op.0.magnitude(bin, 10, h, w).0));
        let signed = table(&|op| op.0.magnitude(0, 10, h, w).1 as i64 as f64).gt(0.0);
        // torchvision: `if probs[i] <= p`, and `if signed and signs[i] == 0: magnitude *= -1`.
        let apply = probs.select(1, step).le_tensor(&p);
        let kinds = code.where_self(&apply, &code.full_like(AugOp::Identity.code()));
        let negate = signed.logical_and(&signs.select(1, step).eq(0));
        let magnitude = (-&magnitude).where_self(&negate, &magnitude);
        let candidates: Vec<AugOp> = ops.iter().map(|op| op.0).collect();
        augmented = apply_ops(&augmented, &kinds, &magnitude, &candidates, interpolation);
    }
    augmented
}

/// Applies to image i the op with code `kinds[i]` (int64 `[B]`, see [`AugOp::code`]) and
/// magnitude `magnitudes[i]` (any float kind `[B]`, used as double; `_apply_op` units), for
/// a uint8 batch [B, 3, H, W] -> the same shape.
/// `candidates` lists the ops that may occur (others are left as they are); each is
/// computed once for the whole batch, the geometric ones together in one grid sample.
pub fn apply_ops(
    images: &Tensor,
    kinds: &Tensor,
    magnitudes: &Tensor,
    candidates: &[AugOp],
    interpolation: Interpolation,
) -> Tensor {
    let (b, _, h, w) = images.size4().expect("apply_ops expects [B,3,H,W]");
    let device = images.device();
    let kinds = kinds.to_device(device);
    let magnitudes = magnitudes.to_device(device).to_kind(Kind::Double);
    let mut unique: Vec<AugOp> = Vec::new();
    for &op in candidates {
        if op != AugOp::Identity && !unique.contains(&op) {
            unique.push(op);
        }
    }
    let mut out = images.shallow_clone();
    let geometric: Vec<AugOp> = unique
        .iter()
        .copied()
        .filter(|op| op.is_geometric())
        .collect();
    if !geometric.is_empty() {
        let mut matrix = identity_matrix(b, device);
        let mut any = Tensor::zeros([b], (Kind::Bool, device));
        for op in geometric {
            let selected = kinds.eq(op.code());
            matrix = op_matrix(op, &magnitudes, h, w).where_self(&selected.unsqueeze(1), &matrix);
            any = any.logical_or(&selected);
        }
        let warped = affine(images, &matrix, interpolation);
        out = warped.where_self(&per_image(&any), &out);
    }
    for op in unique.into_iter().filter(|op| !op.is_geometric()) {
        let selected = per_image(&kinds.eq(op.code()));
        out = apply_op(images, op, &magnitudes, interpolation).where_self(&selected, &out);
    }
    out
}

/// torchvision's `_apply_op(img, op, magnitude)` for every image of a uint8 batch
/// [B, 3, H, W] (-> the same shape), with a per-image magnitude (float `[B]`, or one value
/// for all).
pub fn apply_op(
    images: &Tensor,
    op: AugOp,
    magnitude: &Tensor,
    interpolation: Interpolation,
) -> Tensor {
    let (b, _, h, w) = images.size4().expect("apply_op expects [B,3,H,W]");
    let magnitude = magnitude
        .to_device(images.device())
        .to_kind(Kind::Double)
        .reshape([-1])
        .expand([b], false);
    match op {
        AugOp::Identity => images.shallow_clone(),
        AugOp::ShearX | AugOp::ShearY | AugOp::TranslateX | AugOp::TranslateY | AugOp::Rotate => {
            affine(images, &op_matrix(op, &magnitude, h, w), interpolation)
        }
        AugOp::Brightness => adjust_brightness(images, &(&magnitude + 1.0)),
        AugOp::Color => adjust_saturation(images, &(&magnitude + 1.0)),
        AugOp::Contrast => adjust_contrast(images, &(&magnitude + 1.0)),
        AugOp::Sharpness => adjust_sharpness(images, &(&magnitude + 1.0)),
        AugOp::Posterize => posterize(images, &magnitude.trunc()),
        AugOp::Solarize => solarize(images, &magnitude),
        AugOp::AutoContrast => autocontrast(images),
        AugOp::Equalize => equalize(images),
        AugOp::Invert => invert(images),
    }
}

/// `[B]` -> [B, 1, 1, 1] (one value, `[1]`, -> [1, 1, 1, 1]) double on `images`' device.
fn double_per_image(values: &Tensor, images: &Tensor) -> Tensor {
    per_image(&values.to_device(images.device()).to_kind(Kind::Double))
}

/// torchvision's `_blend` for uint8: `(r * img1 + (1 - r) * img2).clamp(0, 255)`, truncated.
/// `img1` uint8 [B, C, H, W]; `img2` uint8 or float, the same shape or broadcast to it (a
/// [B, 1, H, W] grayscale, a [B, 1, 1, 1] mean); `ratio` `[B]` -> uint8 [B, C, H, W].
fn blend(img1: &Tensor, img2: &Tensor, ratio: &Tensor) -> Tensor {
    let r = double_per_image(ratio, img1);
    let one_minus = (r.neg() + 1.0).to_kind(Kind::Float);
    let r = r.to_kind(Kind::Float);
    (img1.to_kind(Kind::Float) * r + img2.to_kind(Kind::Float) * one_minus)
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

/// torchvision's `rgb_to_grayscale` of uint8 [B, 3, H, W]: uint8 [B, 1, H, W], truncated.
pub fn rgb_to_grayscale(images: &Tensor) -> Tensor {
    let r = images.select(1, 0);
    let g = images.select(1, 1);
    let b = images.select(1, 2);
    (r * 0.2989 + g * 0.587 + b * 0.114)
        .to_kind(Kind::Uint8)
        .unsqueeze(1)
}

/// `adjust_brightness` of uint8 [B, 3, H, W] with per-image factors `[B]`: blend with
/// black.
pub fn adjust_brightness(images: &Tensor, factor: &Tensor) -> Tensor {
    blend(images, &images.zeros_like(), factor)
}

/// `adjust_contrast` of uint8 [B, 3, H, W] with per-image factors `[B]`: blend with the
/// mean of the image's (uint8) grayscale.
pub fn adjust_contrast(images: &Tensor, factor: &Tensor) -> Tensor {
    let mean = rgb_to_grayscale(images).to_kind(Kind::Float).mean_dim(
        [1i64, 2, 3].as_slice(),
        true,
        Kind::Float,
    );
    blend(images, &mean, factor)
}

/// `adjust_saturation` (the "Color" op) of uint8 [B, 3, H, W] with per-image factors `[B]`:
/// blend with the image's (uint8) grayscale.
fn adjust_saturation(images: &Tensor, factor: &Tensor) -> Tensor {
    blend(images, &rgb_to_grayscale(images), factor)
}

/// `adjust_sharpness` of uint8 [B, C, H, W] with per-image factors `[B]`: blend with the
/// image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]]/13 (rounded to uint8), whose border
/// pixels are the image's.
fn adjust_sharpness(images: &Tensor, factor: &Tensor) -> Tensor {
    let (_, c, h, w) = images.size4().expect("adjust_sharpness expects [B,C,H,W]");
    if h <= 2 || w <= 2 {
        return images.shallow_clone();
    }
    let x = images.to_kind(Kind::Float);
    let kernel: Vec<f64> = [1., 1., 1., 1., 5., 1., 1., 1., 1.]
        .iter()
        .map(|v| v / 13.0)
        .collect();
    let kernel = device_constants(&kernel, images.device())
        .to_kind(Kind::Float)
        .view([1, 1, 3, 3])
        .expand([c, 1, 3, 3], false)
        .contiguous();
    let smoothed = x
        .conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
        .round();
    let degenerate = x.copy();
    degenerate
        .narrow(2, 1, h - 2)
        .narrow(3, 1, w - 2)
        .copy_(&smoothed);
    blend(images, &degenerate, factor)
}

/// `posterize` of uint8 [B, C, H, W] with per-image bit counts `[B]` (1..=8): keeps the
/// `bits` high bits.
fn posterize(images: &Tensor, bits: &Tensor) -> Tensor {
    let step = (double_per_image(bits, images).neg() + 8.0).exp2();
    let x = images.to_kind(Kind::Double);
    ((x / &step).floor() * step).to_kind(Kind::Uint8)
}

/// `solarize` of uint8 [B, C, H, W] with per-image thresholds `[B]`: inverts the pixels
/// `>= threshold` (256: none).
pub fn solarize(images: &Tensor, threshold: &Tensor) -> Tensor {
    let threshold = double_per_image(threshold, images);
    let invert_here = images.to_kind(Kind::Double).ge_tensor(&threshold);
    invert(images).where_self(&invert_here, images)
}

/// `invert` of uint8 images (any shape): 255 - pixel, as a bitwise not.
pub fn invert(images: &Tensor) -> Tensor {
    images.bitwise_not()
}

/// `autocontrast` of uint8 [B, C, H, W]: stretches every image channel to 0..=255 (a
/// constant channel is left).
pub fn autocontrast(images: &Tensor) -> Tensor {
    let x = images.to_kind(Kind::Float);
    let minimum = x.amin([2i64, 3].as_slice(), true);
    let maximum = x.amax([2i64, 3].as_slice(), true);
    let flat = maximum.eq_tensor(&minimum);
    let scale = (maximum.full_like(255.0) / (&maximum - &minimum))
        .where_self(&flat.logical_not(), &minimum.ones_like());
    let minimum = minimum.zeros_like().where_self(&flat, &minimum);
    ((x - minimum) * scale)
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

/// `equalize` of uint8 [B, C, H, W]: histogram equalization of every image channel, as
/// torchvision's `_scale_channel` computes it (step = pixels not of the top value / 255; a
/// channel with step 0 is left), batched: one histogram over image-channel offset values,
/// `cumsum`, and a `gather` through the per-channel lookup tables.
pub fn equalize(images: &Tensor) -> Tensor {
    let (b, c, h, w) = images.size4().expect("equalize expects [B,C,H,W]");
    let device = images.device();
    let (channels, pixels) = (b * c, h * w);
    let flat = images.to_kind(Kind::Int64).reshape([channels, pixels]);
    let offsets = Tensor::arange(channels, (Kind::Int64, device)).view([channels, 1]) * 256;
    // A scatter-add histogram: bincount would read the maximum back to the host on CUDA.
    let index = (&flat + offsets).reshape([-1]);
    let hist = Tensor::zeros([channels * 256], (Kind::Int64, device))
        .index_add_(0, &index, &index.ones_like())
        .view([channels, 256]);
    let top = flat.amax([1i64].as_slice(), true);
    let step = (pixels - hist.gather(1, &top, false)).floor_divide_scalar(255);
    let lut = (hist.cumsum(1, Kind::Int64) + step.floor_divide_scalar(2))
        .floor_divide(&step.clamp_min(1))
        .narrow(1, 0, 255)
        .constant_pad_nd([1, 0])
        .clamp(0, 255);
    let equalized = lut.gather(1, &flat, false);
    equalized
        .where_self(&step.gt(0), &flat)
        .view([b, c, h, w])
        .to_kind(Kind::Uint8)
}

/// `b` identity affine matrices: double [b, 6], laid out as [`op_matrix`]'s.
fn identity_matrix(b: i64, device: tch::Device) -> Tensor {
    device_constants(&[1.0, 0., 0., 0., 1., 0.], device)
        .view([1, 6])
        .repeat([b, 1])
}

/// The inverse affine matrix torchvision's `F.affine`/`F.rotate` build for `op` with
/// per-image magnitudes `[B]`, in its convention (pixel coordinates about the image centre,
/// output -> input): [B, 6] double rows (a, b, c, d, e, f) for x' = a x + b y + c,
/// y' = d x + e y + f.
pub fn op_matrix(op: AugOp, magnitude: &Tensor, height: i64, width: i64) -> Tensor {
    let m = magnitude.to_kind(Kind::Double);
    let zero = m.zeros_like();
    let one = m.ones_like();
    let (h, w) = (height as f64, width as f64);
    let rows: Vec<Tensor> = match op {
        // shear about the top-left corner (`center=[0, 0]`)
        AugOp::ShearX => vec![one.copy(), m.copy(), &m * (h / 2.0), zero.copy(), one, zero],
        AugOp::ShearY => vec![
            one.copy(),
            zero.copy(),
            zero.copy(),
            m.copy(),
            one,
            &m * (w / 2.0),
        ],
        // `translate=[int(magnitude), 0]`
        AugOp::TranslateX => vec![one.copy(), zero.copy(), -m.trunc(), zero.copy(), one, zero],
        AugOp::TranslateY => vec![one.copy(), zero.copy(), zero.copy(), zero, one, -m.trunc()],
        // counter-clockwise by `magnitude` degrees about the centre
        AugOp::Rotate => {
            let theta = m.deg2rad();
            let (cos, sin) = (theta.cos(), theta.sin());
            vec![cos.copy(), -&sin, zero.copy(), sin, cos, zero]
        }
        _ => vec![
            one.copy(),
            zero.copy(),
            zero.copy(),
            zero,
            one.copy(),
            m.zeros_like(),
        ],
    };
    Tensor::stack(&rows, 1)
}

/// Resamples every image of a uint8 batch [B, C, H, W] through its own inverse affine
/// matrix ([B, 6], see [`op_matrix`]) with `affine_grid_generator` + `grid_sampler`
/// (`align_corners=False`, zeros outside), rounding back to uint8 [B, C, H, W] as
/// torchvision does.
pub fn affine(images: &Tensor, matrix: &Tensor, interpolation: Interpolation) -> Tensor {
    let (b, c, h, w) = images.size4().expect("affine expects [B,C,H,W]");
    let m = matrix.to_device(images.device()).to_kind(Kind::Double);
    let (hf, wf) = (h as f64, w as f64);
    let col = |i: i64| m.select(1, i);
    // Pixel units about the centre -> the [-1, 1] units of affine_grid (align_corners=False).
    let theta = Tensor::stack(
        &[
            col(0),
            col(1) * (hf / wf),
            col(2) * (2.0 / wf),
            col(3) * (wf / hf),
            col(4),
            col(5) * (2.0 / hf),
        ],
        1,
    )
    .to_kind(Kind::Float)
    .view([b, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, [b, c, h, w], false);
    images
        .to_kind(Kind::Float)
        .grid_sampler(&grid, interpolation.grid_sampler_mode(), 0, false)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

/// torchvision's `RandomErasing(p, scale, ratio, value)` for every image of a batch
/// [B, C, H, W] of any dtype (the strong recipe uses it on the normalized floats): with
/// probability `p` an image gets one rectangle set to `value`. As torchvision, up to 10
/// attempts draw an area (uniform in `scale` × H·W) and an aspect ratio (log-uniform in
/// `ratio`), the rectangle's sides are `round(sqrt(area·ratio))` × `round(sqrt(area/ratio))`,
/// the first attempt that fits strictly inside the image is placed uniformly, and an image
/// without one is left as it is.
pub fn random_erasing(images: &Tensor, config: &RandomErasing) -> Tensor {
    const ATTEMPTS: i64 = 10;
    let (b, _, h, w) = images.size4().expect("random_erasing expects [B,C,H,W]");
    let double_options = (Kind::Double, images.device());
    let area = (h * w) as f64;
    let erase_area = (Tensor::rand([b, ATTEMPTS], double_options)
        * (config.scale.1 - config.scale.0)
        + config.scale.0)
        * area;
    let (log_lo, log_hi) = (config.ratio.0.ln(), config.ratio.1.ln());
    let aspect = (Tensor::rand([b, ATTEMPTS], double_options) * (log_hi - log_lo) + log_lo).exp();
    let erase_height = (&erase_area * &aspect).sqrt().round();
    let erase_width = (&erase_area / &aspect).sqrt().round();
    let fits = erase_height
        .lt(h as f64)
        .logical_and(&erase_width.lt(w as f64));
    let first = fits.to_kind(Kind::Int64).argmax(1, true);
    let found = fits.any_dim(1, true);
    let erase_height = erase_height.gather(1, &first, false);
    let erase_width = erase_width.gather(1, &first, false);
    let top = (Tensor::rand([b, 1], double_options) * (h as f64 - &erase_height + 1.0)).floor();
    let left = (Tensor::rand([b, 1], double_options) * (w as f64 - &erase_width + 1.0)).floor();
    let apply = Tensor::rand([b, 1], double_options)
        .lt(config.p)
        .logical_and(&found);
    let inside = box_mask(
        &top,
        &(&top + &erase_height),
        &left,
        &(&left + &erase_width),
        h,
        w,
    )
    .logical_and(&per_image(&apply));
    images.masked_fill(&inside, config.value)
}

/// Per-image rectangles as a mask: rows top..bottom and columns left..right (ends
/// excluded) of an h x w image, from double `[B]` or [B, 1] bounds -> bool [B, 1, h, w]
/// (B is 1 for one box over the whole batch).
pub(super) fn box_mask(
    top: &Tensor,
    bottom: &Tensor,
    left: &Tensor,
    right: &Tensor,
    h: i64,
    w: i64,
) -> Tensor {
    let double_options = (Kind::Double, top.device());
    let rows = Tensor::arange(h, double_options).view([1, 1, h, 1]);
    let cols = Tensor::arange(w, double_options).view([1, 1, 1, w]);
    rows.ge_tensor(&per_image(top))
        .logical_and(&rows.lt_tensor(&per_image(bottom)))
        .logical_and(&cols.ge_tensor(&per_image(left)))
        .logical_and(&cols.lt_tensor(&per_image(right)))
}
