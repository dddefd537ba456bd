//! The notebook's torchvision transforms as batched tensor ops on the batch's own device.
//!
//! train: `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `Resize(image_size)` (when
//! not 32), `ToTensor()`, `Normalize(CIFAR_MEAN, CIFAR_STD)`; test: `Resize`, `ToTensor`,
//! `Normalize`. Crop and flip run on the uint8 batch (a quarter of the memory traffic);
//! resizing runs on the [0, 1] floats, so unlike PIL it does not round to uint8 in between.
//!
//! All randomness comes from libtorch's generator (`Tensor::randint`, `Tensor::rand`), so
//! `tch::manual_seed` makes a run reproducible. There is no per-image loop and no host
//! round trip.

use super::{CIFAR_MEAN, CIFAR_STD};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

/// The notebook's `RandomCrop(32, padding=4)` padding.
pub const CROP_PADDING: i64 = 4;
/// The notebook's `RandomHorizontalFlip()` probability.
pub const FLIP_PROBABILITY: f64 = 0.5;

/// uint8 [B, 3, H, W] on any device -> float [B, 3, image_size, image_size], normalized.
/// Random crop (pad 4) and flip, then [`test_transform`]'s steps.
pub fn train_transform(images: &Tensor, image_size: i64) -> Tensor {
    let x = random_crop(images, CROP_PADDING);
    let x = random_horizontal_flip(&x, FLIP_PROBABILITY);
    test_transform(&x, image_size)
}

/// uint8 [B, 3, H, W] -> float [B, 3, image_size, image_size], normalized (resized only
/// if needed). Deterministic.
pub fn test_transform(images: &Tensor, image_size: i64) -> Tensor {
    normalize(&resize(&to_float01(images), image_size))
}

/// `RandomCrop(H×W, padding)` with zero padding, for every image of a batch [B, C, H, W]
/// (any dtype): pads once, draws a per-sample offset in 0..=2*padding for each axis, and
/// gathers each window with two `gather`s (rows, then columns) whose index tensors are
/// broadcast views, never materialized per pixel. The output has the input's size.
pub fn random_crop(images: &Tensor, padding: i64) -> Tensor {
    if padding <= 0 {
        return images.shallow_clone();
    }
    let (b, c, h, w) = images.size4().expect("random_crop expects [B,C,H,W]");
    let padded = images.constant_pad_nd([padding, padding, padding, padding]);
    let options = (Kind::Int64, images.device());
    let top = Tensor::randint(2 * padding + 1, [b], options);
    let left = Tensor::randint(2 * padding + 1, [b], options);
    // rows[b, c, y, x'] = top[b] + y; cols[b, c, y, x] = left[b] + x.
    let rows = (per_image(&top) + Tensor::arange(h, options).view([1, 1, h, 1]))
        .expand([b, c, h, w + 2 * padding], false);
    let cols = (per_image(&left) + Tensor::arange(w, options).view([1, 1, 1, w]))
        .expand([b, c, h, w], false);
    // out[b, c, y, x] = padded[b, c, top[b] + y, left[b] + x].
    padded.gather(2, &rows, false).gather(3, &cols, false)
}

/// `RandomHorizontalFlip(p)` for every image of a batch [B, C, H, W] of any dtype (-> the
/// same): a per-sample mask from `Tensor::rand` selects between the batch and its mirror.
pub fn random_horizontal_flip(images: &Tensor, p: f64) -> Tensor {
    let b = images.size()[0];
    let mask = Tensor::rand([b], (Kind::Float, images.device())).lt(p);
    images.flip([3]).where_self(&per_image(&mask), images)
}

/// One value per image, `[B]` or [B, 1] -> [B, 1, 1, 1] (or one for the whole batch, `[1]`
/// -> [1, 1, 1, 1]), of the same kind, to broadcast over each image's channels and pixels.
pub(crate) fn per_image(values: &Tensor) -> Tensor {
    values.view([-1, 1, 1, 1])
}

/// uint8 -> float in [0, 1] (`ToTensor`'s scaling). [B, C, H, W] -> [B, C, H, W].
pub fn to_float01(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 255.0
}

/// Bilinear resize of a float batch [B, C, H, W] to [B, C, size, size] (a no-op when
/// already that size).
/// Downscaling is antialiased, as PIL's (and torchvision's default) bilinear resize is;
/// upscaling is plain bilinear with `align_corners=False`, which is what both compute.
pub fn resize(images: &Tensor, size: i64) -> Tensor {
    let shape = images.size();
    let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    if h == size && w == size {
        return images.shallow_clone();
    }
    if size < h || size < w {
        images.internal_upsample_bilinear2d_aa([size, size], false, None, None)
    } else {
        images.upsample_bilinear2d([size, size], false, None, None)
    }
}

/// `Normalize(CIFAR_MEAN, CIFAR_STD)` of [0, 1] floats [B, 3, H, W] -> [B, 3, H, W].
pub fn normalize(images: &Tensor) -> Tensor {
    let mean = channel_constants(&CIFAR_MEAN, images);
    let std = channel_constants(&CIFAR_STD, images);
    (images - mean) / std
}

/// [1, 3, 1, 1] per-channel constants in `like`'s kind and device.
fn channel_constants(values: &[f64; 3], like: &Tensor) -> Tensor {
    device_constants(values, like.device())
        .to_kind(like.kind())
        .view([1, 3, 1, 1])
}

/// `values` as a double `[values.len()]` tensor on `device`, for the constants of a batch's
/// transforms (normalisation, augmentation tables, kernels). Each distinct (values, device)
/// is uploaded once and then shared, so a training step costs no upload: callers must not
/// modify the result in place.
///
/// The one upload does not wait for the device: an ordinary (pageable) host-to-GPU copy
/// synchronises the host with the GPU, so the values go through pinned memory and an
/// asynchronous copy (libtorch keeps the pinned buffer alive until the copy has run). It
/// pins with `_pin_memory`: `pin_memory`, to which tch always passes the device, prints
/// a deprecation warning on every call in libtorch 2.11.
pub fn device_constants(values: &[f64], device: Device) -> Tensor {
    type Cache = Mutex<HashMap<(Vec<u64>, Device), Tensor>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (values.iter().map(|v| v.to_bits()).collect(), device);
    let mut cache = CACHE
        .get_or_init(Cache::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(key)
        .or_insert_with(|| {
            let host = Tensor::from_slice(values);
            match device {
                Device::Cpu => host,
                _ => host
                    .internal_pin_memory(device)
                    .to_device_(device, Kind::Double, true, false),
            }
        })
        .shallow_clone()
}
