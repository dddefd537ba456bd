//! The strong recipe's augmentations (`data::augment`, `data::mix`): identities at
//! magnitude 0, rotation against `rot90`, range at maximal magnitude, reproducibility and
//! per-image diversity, the policies' steps and probabilities, golden checks against
//! torchvision, MixUp/CutMix targets (label smoothing included), MixUp/CutMix randomness
//! against timm's distributions, random erasing, and the strong transform stage by stage.
//!
//! libtorch's generator is global and the harness runs tests on parallel threads, so every
//! test that draws random numbers holds `common::seeded`'s guard from its seeding on.

mod common;

use common::{devices, seeded};

use std::collections::{BTreeMap, BTreeSet};
use tch::{Device, Kind, Tensor};
use vit_tch::checkpoint::TensorFile;
use vit_tch::data::augment::{
    self, apply_op, AugOp, AugmentConfig, Interpolation, Policy, RandAugment, RandomErasing,
};
use vit_tch::data::mix::{self, MixConfig, MixMode};
use vit_tch::data::transforms;
use vit_tch::data::{CIFAR_MEAN, CIFAR_STD};
use vit_tch::model::ViTConfig;
use vit_tch::train::{Regularization, TrainBatch};

fn random_u8(shape: &[i64]) -> Tensor {
    Tensor::randint(256, shape, (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8)
}

fn full(b: i64, value: f64) -> Tensor {
    Tensor::full([b], value, (Kind::Double, Device::Cpu))
}

/// Asserts that [B, 3, H, W] normalised images are pixels of [0, 1] before normalisation, in
/// every channel (each has its own mean and std).
fn assert_normalised_pixels(images: &Tensor, case: &str) {
    let shape = [1i64, 3, 1, 1];
    let mean = Tensor::from_slice(&CIFAR_MEAN)
        .view(shape)
        .to_device(images.device());
    let std = Tensor::from_slice(&CIFAR_STD)
        .view(shape)
        .to_device(images.device());
    let pixels = images.to_kind(Kind::Double) * std + mean;
    let (min, max) = (
        pixels.min().double_value(&[]),
        pixels.max().double_value(&[]),
    );
    assert!(
        min >= -1e-5 && max <= 1.0 + 1e-5,
        "{case}: pixels in [{min}, {max}] before normalisation"
    );
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> i64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Int64) - b.to_kind(Kind::Int64))
        .abs()
        .max()
        .int64_value(&[])
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

const INTERPOLATIONS: [Interpolation; 2] = [Interpolation::Nearest, Interpolation::Bilinear];

/// Entry `key` of the JSON object `augment_reference.py` stores as the `reference` metadata.
fn reference_entry<T: serde::de::DeserializeOwned>(file: &TensorFile, key: &str) -> T {
    let reference: serde_json::Value =
        serde_json::from_str(&file.metadata["reference"]).expect("reference metadata");
    serde_json::from_value(reference[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn magnitude_zero_is_identity() {
    let _g = seeded(1);
    let images = random_u8(&[8, 3, 32, 32]);
    let cases = [
        (AugOp::Identity, 0.0),
        (AugOp::Rotate, 0.0),
        (AugOp::ShearX, 0.0),
        (AugOp::ShearY, 0.0),
        (AugOp::TranslateX, 0.0),
        (AugOp::TranslateY, 0.0),
        (AugOp::Brightness, 0.0), // factor 1.0
        (AugOp::Color, 0.0),
        (AugOp::Contrast, 0.0),
        (AugOp::Sharpness, 0.0),
        (AugOp::Solarize, 256.0),
        (AugOp::Posterize, 8.0),
    ];
    for interpolation in INTERPOLATIONS {
        for (op, magnitude) in cases {
            let out = apply_op(&images, op, &full(8, magnitude), interpolation);
            assert_eq!(out.kind(), Kind::Uint8);
            assert!(
                out.equal(&images),
                "{op:?} at {magnitude} ({interpolation:?}) changed the images"
            );
        }
    }
    // RandAugment with M = 0 over the ops that are identities there (solarize's bin 0 is
    // threshold 255, which inverts 255s; autocontrast and equalize have no magnitude).
    let cfg = RandAugment {
        num_ops: 3,
        magnitude: 0,
        num_magnitude_bins: 31,
        // RandAugment's list up to Posterize: the ones before Solarize.
        ops: AugOp::RANDAUGMENT[..11].to_vec(),
    };
    for interpolation in INTERPOLATIONS {
        let out = augment::rand_augment(&images, &cfg, interpolation);
        assert!(out.equal(&images), "RandAugment M=0 ({interpolation:?})");
    }
}

#[test]
fn flips_and_zero_rotation_are_identities() {
    let _g = seeded(2);
    let images = random_u8(&[16, 3, 32, 32]);
    assert!(transforms::random_horizontal_flip(&images, 0.0).equal(&images));
    let flipped = transforms::random_horizontal_flip(&images, 1.0);
    assert!(flipped.equal(&images.flip([3])));
    assert!(transforms::random_horizontal_flip(&flipped, 1.0).equal(&images));
    for interpolation in INTERPOLATIONS {
        let out = apply_op(&images, AugOp::Rotate, &full(16, 0.0), interpolation);
        assert!(out.equal(&images), "rotate 0 ({interpolation:?})");
        // A full turn of four quarter turns.
        let mut x = images.shallow_clone();
        for _ in 0..4 {
            x = apply_op(&x, AugOp::Rotate, &full(16, 90.0), interpolation);
        }
        assert!(x.equal(&images), "four quarter turns ({interpolation:?})");
    }
}

/// A quarter turn of a square image samples exact pixel centres (up to float rounding of
/// cos 90° ≈ -4e-8), so there are no border effects: the result equals `rot90` exactly,
/// nearest and bilinear alike.
#[test]
fn rotation_by_90_degrees_is_rot90() {
    let _g = seeded(3);
    let images = random_u8(&[4, 3, 17, 17]);
    for interpolation in INTERPOLATIONS {
        let ccw = apply_op(&images, AugOp::Rotate, &full(4, 90.0), interpolation);
        assert!(
            ccw.equal(&images.rot90(1, [2, 3])),
            "+90 ({interpolation:?})"
        );
        let cw = apply_op(&images, AugOp::Rotate, &full(4, -90.0), interpolation);
        assert!(
            cw.equal(&images.rot90(-1, [2, 3])),
            "-90 ({interpolation:?})"
        );
    }
}

/// Shear on non-square images (the golden cases are all square, where a height and a width
/// swapped in the affine grid cannot show): torchvision shears about the top-left corner,
/// so with nearest sampling output pixel (i, j) of ShearX by m is input pixel
/// (i, round(j + m (i + 1/2))), of ShearY (round(i + m (j + 1/2)), j), and 0 where that
/// falls outside (checked against torchvision's `_apply_op` on this 6 x 11 image). With
/// m = ±0.3 no index lands on a tie, so the comparison is exact, wide and tall, per image
/// magnitude.
#[test]
fn shear_of_a_non_square_image_is_torchvisions_about_the_corner() {
    for (h, w) in [(6i64, 11i64), (11, 6)] {
        let pixels = 3 * h * w;
        let image: Vec<u8> = (0..pixels).map(|k| (k % 251 + 1) as u8).collect();
        let image = Tensor::from_slice(&image).view([1, 3, h, w]);
        let images = Tensor::cat(&[&image, &image], 0);
        let magnitudes = Tensor::from_slice(&[0.3f64, -0.3]);
        for op in [AugOp::ShearX, AugOp::ShearY] {
            let out = apply_op(&images, op, &magnitudes, Interpolation::Nearest);
            for (n, m) in [0.3f64, -0.3].into_iter().enumerate() {
                let mut expected = vec![0u8; pixels as usize];
                for i in 0..h {
                    for j in 0..w {
                        let (si, sj) = match op {
                            AugOp::ShearX => (i, (j as f64 + m * (i as f64 + 0.5)).round() as i64),
                            _ => ((i as f64 + m * (j as f64 + 0.5)).round() as i64, j),
                        };
                        if (0..h).contains(&si) && (0..w).contains(&sj) {
                            for c in 0..3 {
                                expected[((c * h + i) * w + j) as usize] =
                                    ((((c * h + si) * w + sj) % 251) + 1) as u8;
                            }
                        }
                    }
                }
                let expected = Tensor::from_slice(&expected).view([3, h, w]);
                let got = out.get(n as i64);
                let off = got.ne_tensor(&expected).sum(Kind::Int64).int64_value(&[]);
                assert_eq!(off, 0, "{op:?} {m} on {h}x{w}: {off} pixels differ");
            }
        }
    }
}

/// uint8 outputs cannot leave [0, 255]; what can go wrong is a float result cast without
/// clamping, which wraps around. Every op runs at its extreme magnitudes (dtype and shape
/// kept), and brightness and contrast are compared with their clamped float formulas on
/// random pixels (`ops_match_torchvision` compares all four blending ops at their extremes
/// with torchvision's).
#[test]
fn outputs_stay_in_range_at_max_magnitude() {
    let _g = seeded(4);
    let (b, h, w) = (16, 32, 32);
    let images = random_u8(&[b, 3, h, w]);
    for interpolation in INTERPOLATIONS {
        for op in AugOp::all() {
            let (max, signed) = op.magnitude(30, 31, h, w);
            let signs: &[f64] = if signed { &[1.0, -1.0] } else { &[1.0] };
            for sign in signs {
                let out = apply_op(&images, op, &full(b, sign * max), interpolation);
                assert_eq!(out.kind(), Kind::Uint8, "{op:?}");
                assert_eq!(out.size(), images.size(), "{op:?}");
            }
        }
    }
    // No wrap-around where the float result leaves [0, 255]: brightness and contrast at
    // factor 1.9 and 0.1 against their clamped float formulas.
    let x = images.to_kind(Kind::Float);
    for factor in [1.9f64, 0.1] {
        let expected = (&x * factor).clamp(0.0, 255.0).to_kind(Kind::Uint8);
        if factor > 1.0 {
            // The comparison tests the clamp only where it cuts pixels off.
            let saturated = |t: &Tensor| t.eq(255).sum(Kind::Int64).int64_value(&[]);
            assert!(saturated(&expected) > saturated(&images) * 2);
        }
        let out = augment::adjust_brightness(&images, &full(b, factor));
        assert!(max_abs_diff(&out, &expected) <= 1, "brightness {factor}");
        let mean = augment::rgb_to_grayscale(&images)
            .to_kind(Kind::Float)
            .mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
        let expected = (&x * factor + mean * (1.0 - factor))
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8);
        let out = augment::adjust_contrast(&images, &full(b, factor));
        assert!(max_abs_diff(&out, &expected) <= 1, "contrast {factor}");
    }
    let out = augment::adjust_brightness(&images, &full(b, 1.9));
    assert!(out.ge_tensor(&images).all().int64_value(&[]) == 1);
    // Whole policies at their largest magnitude.
    let cfg = RandAugment {
        num_ops: 4,
        magnitude: 30,
        ..RandAugment::default()
    };
    for interpolation in INTERPOLATIONS {
        let out = augment::rand_augment(&images, &cfg, interpolation);
        assert_eq!((out.kind(), out.size()), (Kind::Uint8, images.size()));
        let out = augment::auto_augment_cifar10(&images, interpolation);
        assert_eq!((out.kind(), out.size()), (Kind::Uint8, images.size()));
    }
}

#[test]
fn a_fixed_seed_gives_the_same_batch() {
    let _g = seeded(5);
    let images = random_u8(&[32, 3, 32, 32]);
    let labels = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
    let configs = [
        AugmentConfig::default(),
        AugmentConfig {
            policy: Some(Policy::AutoAugmentCifar10),
            interpolation: Interpolation::Bilinear,
            erasing: Some(RandomErasing {
                p: 1.0,
                ..RandomErasing::default()
            }),
            ..AugmentConfig::default()
        },
    ];
    let mix_cfg = MixConfig {
        mode: MixMode::Elem,
        ..MixConfig::default()
    };
    for cfg in &configs {
        let run = |seed| {
            tch::manual_seed(seed);
            let x = augment::strong_train_transform(&images, 32, cfg);
            let (mixed, targets) = mix::mix(&x, &labels, 10, &mix_cfg, 0.1);
            (x, mixed, targets)
        };
        let (a, b, c) = (run(11), run(11), run(12));
        assert_eq!(a.0.size(), [32, 3, 32, 32]);
        assert_eq!(a.0.kind(), Kind::Float);
        assert!(a.0.equal(&b.0) && a.1.equal(&b.1) && a.2.equal(&b.2));
        assert!(!a.0.equal(&c.0), "another seed gives another batch");
    }
}

/// Distinct images of a batch of copies of one image.
fn distinct_outcomes(out: &Tensor) -> usize {
    let b = out.size()[0];
    let weights = Tensor::rand(out.size()[1..].to_vec(), (Kind::Double, Device::Cpu));
    let keys = (out.to_kind(Kind::Double) * weights).sum_dim_intlist(
        [1i64, 2, 3].as_slice(),
        false,
        Kind::Double,
    );
    let keys = to_vec(&keys);
    assert_eq!(keys.len() as i64, b);
    keys.iter()
        .map(|k| (k * 1e6).round() as i64)
        .collect::<BTreeSet<_>>()
        .len()
}

#[test]
fn images_of_a_batch_draw_their_own_ops() {
    let _g = seeded(6);
    let one = random_u8(&[1, 3, 32, 32]);
    let batch = one.repeat([256, 1, 1, 1]);
    let cfg = RandAugment::default();
    let out = augment::rand_augment(&batch, &cfg, Interpolation::Nearest);
    let distinct = distinct_outcomes(&out);
    assert!(distinct >= 10, "RandAugment: {distinct} distinct outcomes");
    let out = augment::auto_augment_cifar10(&batch, Interpolation::Nearest);
    let distinct = distinct_outcomes(&out);
    assert!(distinct >= 10, "AutoAugment: {distinct} distinct outcomes");
    // Per-image magnitudes reach every image: the geometric ops of one step with four
    // different magnitudes in one batch equal four separate calls.
    let b4 = one.repeat([4, 1, 1, 1]);
    let magnitudes = Tensor::from_slice(&[10.0f64, -20.0, 5.0, 0.0]);
    let kinds = Tensor::from_slice(&[
        AugOp::Rotate.code(),
        AugOp::Rotate.code(),
        AugOp::TranslateX.code(),
        AugOp::Brightness.code(),
    ]);
    let candidates = [AugOp::Rotate, AugOp::TranslateX, AugOp::Brightness];
    let out = augment::apply_ops(
        &b4,
        &kinds,
        &magnitudes,
        &candidates,
        Interpolation::Nearest,
    );
    let ops = [
        AugOp::Rotate,
        AugOp::Rotate,
        AugOp::TranslateX,
        AugOp::Brightness,
    ];
    for (i, op) in ops.iter().enumerate() {
        let m = to_vec(&magnitudes)[i];
        let single = apply_op(&one, *op, &full(1, m), Interpolation::Nearest);
        assert!(
            out.get(i as i64).equal(&single.get(0)),
            "image {i}: {op:?} {m}"
        );
    }
}

/// RandAugment runs `num_ops` steps one after another: with `Invert` as its only op, an odd
/// count inverts every image and an even one gives it back.
#[test]
fn rand_augment_applies_num_ops_ops_in_turn() {
    let _g = seeded(13);
    let images = random_u8(&[8, 3, 16, 16]);
    let inverted = augment::invert(&images);
    for num_ops in 0..=4 {
        let cfg = RandAugment {
            num_ops,
            ops: vec![AugOp::Invert],
            ..RandAugment::default()
        };
        let out = augment::rand_augment(&images, &cfg, Interpolation::Nearest);
        let expected = if num_ops % 2 == 1 { &inverted } else { &images };
        assert!(out.equal(expected), "{num_ops} ops");
    }
}

/// AutoAugment's draws, made again here in the order `auto_augment_cifar10` makes them (a
/// sub-policy per image, then a [B, 2] probability and a [B, 2] sign for its two ops), give
/// each image's expected result by single-op calls: op k of the sub-policy runs where its
/// draw is `<=` its probability, negated where its sign draw is 0 (torchvision's
/// `_apply_op` loop). The batched result must equal it exactly, image by image.
#[test]
fn auto_augment_applies_each_images_sub_policy_with_its_probabilities() {
    let _g = seeded(14);
    let (b, h, w) = (128, 16, 20);
    let images = random_u8(&[b, 3, h, w]);
    for interpolation in INTERPOLATIONS {
        tch::manual_seed(15);
        let policy_id = Tensor::randint(25, [b], (Kind::Int64, Device::Cpu));
        let probs = Tensor::rand([b, 2], (Kind::Double, Device::Cpu));
        let signs = Tensor::randint(2, [b, 2], (Kind::Int64, Device::Cpu));
        tch::manual_seed(15);
        let out = augment::auto_augment_cifar10(&images, interpolation);
        // How many images ran each op, and changed with it: none of the branches may be
        // missing from the batch, or the check below would not see it.
        let (mut ran, mut skipped) = ([0; 2], [0; 2]);
        for i in 0..b {
            let pair = augment::CIFAR10_POLICY[policy_id.int64_value(&[i]) as usize];
            let mut expected = images.narrow(0, i, 1);
            for (step, (op, p, bin)) in [pair.0, pair.1].into_iter().enumerate() {
                let step = step as i64;
                if probs.double_value(&[i, step]) > p {
                    skipped[step as usize] += 1;
                    continue;
                }
                let (magnitude, signed) = op.magnitude(bin.unwrap_or(0), 10, h, w);
                let magnitude = match bin {
                    None => 0.0,
                    Some(_) if signed && signs.int64_value(&[i, step]) == 0 => -magnitude,
                    Some(_) => magnitude,
                };
                let next = apply_op(&expected, op, &full(1, magnitude), interpolation);
                if !next.equal(&expected) {
                    ran[step as usize] += 1;
                }
                expected = next;
            }
            assert!(
                out.narrow(0, i, 1).equal(&expected),
                "{interpolation:?}, image {i}: sub-policy {pair:?}, draws {:?} signs {:?}",
                to_vec(&probs.get(i)),
                to_vec(&signs.get(i))
            );
        }
        assert!(
            ran.iter().chain(&skipped).all(|&n| n >= 10),
            "{interpolation:?}: ran {ran:?}, skipped {skipped:?}"
        );
    }
}

/// Every case of `augment_reference.py` within ±1 intensity level of torchvision, with at
/// most 2% of the values off, on every device.
#[test]
fn ops_match_torchvision() {
    let file = common::fixture("augment_ops");
    let cases: Vec<(String, f64, String)> = reference_entry(&file, "cases");
    // An empty or shortened case list would pass the loop below vacuously.
    assert_eq!(cases.len(), 32, "augment_reference.py's CASES");
    let b = file.get("input").unwrap().size()[0];
    let mut failures = Vec::new();
    for device in devices() {
        let input = file.get("input").unwrap().to_device(device);
        for (i, (name, magnitude, interp)) in cases.iter().enumerate() {
            let op: AugOp = serde_json::from_value(serde_json::json!(name)).expect("op name");
            let interpolation = match interp.as_str() {
                "nearest" => Interpolation::Nearest,
                _ => Interpolation::Bilinear,
            };
            let expected = file.get(&format!("case{i}")).unwrap();
            let out = apply_op(&input, op, &full(b, *magnitude), interpolation);
            assert_eq!(out.device(), device, "{name}");
            let out = out.to_device(Device::Cpu);
            let error = max_abs_diff(&out, expected);
            let off = (out.to_kind(Kind::Int64) - expected.to_kind(Kind::Int64))
                .ne(0)
                .sum(Kind::Int64)
                .int64_value(&[]);
            let case = format!("{device:?} {name} {magnitude} {interp}");
            println!("{case}: max error {error}, {off} values differ");
            // Bilinear rounding may differ by one level here and there, not everywhere.
            if error > 1 || off * 50 > expected.numel() as i64 {
                failures.push(format!("{case}: max error {error}, {off} values differ"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The tables behind the policies are torchvision's: AutoAugment's CIFAR-10 sub-policies,
/// RandAugment's op list in its order, and every op's magnitude and sign flag in every bin
/// (10 and 31 bins, on non-square images), as `augment_reference.py` stored them.
#[test]
fn policy_tables_match_torchvision() {
    type Op = (AugOp, f64, Option<i64>);
    let file = common::fixture("augment_ops");
    let policy: Vec<(Op, Op)> = reference_entry(&file, "cifar10_policy");
    assert_eq!(policy, augment::CIFAR10_POLICY.to_vec());
    let randaugment: Vec<AugOp> = reference_entry(&file, "randaugment_ops");
    assert_eq!(randaugment, AugOp::RANDAUGMENT.to_vec());

    type Space = (i64, i64, i64, BTreeMap<String, (Vec<f64>, bool)>);
    let spaces: Vec<Space> = reference_entry(&file, "magnitudes");
    assert_eq!(spaces.len(), 2);
    for (num_bins, height, width, ops) in spaces {
        let names: BTreeSet<String> = AugOp::all().map(|op| format!("{op:?}")).collect();
        assert_eq!(ops.keys().cloned().collect::<BTreeSet<_>>(), names);
        for (name, (magnitudes, signed)) in ops {
            let op: AugOp = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(magnitudes.len(), num_bins as usize, "{name}");
            for (bin, expected) in magnitudes.into_iter().enumerate() {
                let got = op.magnitude(bin as i64, num_bins, height, width);
                let case = format!("{name}, bin {bin} of {num_bins}, {height}x{width}");
                // torchvision's bins are float32; so are vit's.
                assert!(
                    (got.0 - expected).abs() <= 1e-6 * expected.abs(),
                    "{case}: {got:?}"
                );
                assert_eq!(got.1, signed, "{case}: sign");
            }
        }
    }
}

/// The evaluation transform at sizes other than the image's (down, up by 1.5, up by 53/32)
/// is torchvision's ToTensor scaling, `Resize((size, size))` (bilinear,
/// antialiased) and Normalize.
#[test]
fn resizing_transform_matches_torchvision() {
    let file = common::fixture("augment_ops");
    let input = file.get("input").unwrap().narrow(0, 0, 1);
    for size in [16, 48, 53] {
        let expected = file.get(&format!("resize{size}")).unwrap();
        let actual = vit_tch::data::transforms::test_transform(&input, size);
        common::assert_close(&format!("resize to {size}"), &actual, expected, 1e-5);
    }
}

/// The strong recipe's batch as the trainer builds it (`TrainBatch::new`: crop, flip,
/// AutoAugment or RandAugment, random erasing, MixUp/CutMix), on every device: it stays
/// there, keeps its shape and its pixels within the normalized [0, 1] range, and its soft
/// targets sum to one and keep the label smoothing: no class's target falls below the off
/// value `smoothing / K` (it would be 0 unsmoothed, for all but two classes).
#[test]
fn strong_batch_stays_on_its_device_and_in_range() {
    let _g = seeded(12);
    let config = ViTConfig::small();
    for device in devices() {
        let images = random_u8(&[64, 3, 32, 32]).to_device(device);
        let labels = Tensor::randint(config.num_classes, [64], (Kind::Int64, device));
        for policy in [Policy::AutoAugmentCifar10, Policy::default()] {
            let regularization = Regularization {
                augment: Some(AugmentConfig {
                    policy: Some(policy.clone()),
                    erasing: Some(RandomErasing::default()),
                    ..AugmentConfig::default()
                }),
                mix: Some(MixConfig::default()),
                ..Regularization::default()
            };
            let batch = TrainBatch::new(
                &images,
                labels.shallow_clone(),
                &config,
                &regularization,
                0.1,
                0,
            );
            let case = format!("{device:?} {policy:?}");
            assert_eq!(batch.images.device(), device, "{case}");
            assert_eq!(batch.images.size(), [64, 3, 32, 32], "{case}");
            assert_normalised_pixels(&batch.images, &case);
            let targets = batch.soft_targets.expect("mixing gives soft targets");
            assert_eq!(targets.device(), device, "{case}");
            assert_eq!(targets.size(), [64, config.num_classes], "{case}");
            let row_sums = targets.sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
            let error = (row_sums - 1.0).abs().max().double_value(&[]);
            assert!(error < 1e-5, "{case}: target rows sum to 1 ± {error}");
            let off = 0.1 / config.num_classes as f64;
            let lowest = targets.min().double_value(&[]);
            assert!(
                (lowest - off).abs() < 1e-7,
                "{case}: lowest target {lowest}, not {off}"
            );
        }
    }
}

/// `--mix-off-epoch 2`: the batches of the first two epochs are mixed; later ones are the
/// notebook's crop and flip alone, with soft targets that are each image's own smoothed
/// label (timm's loss, unchanged).
#[test]
fn mixing_stops_after_mix_off_epoch() {
    let _g = seeded(5);
    let config = ViTConfig::tiny();
    let images = random_u8(&[16, 3, 32, 32]);
    let labels = Tensor::randint(config.num_classes, [16], (Kind::Int64, Device::Cpu));
    let regularization = Regularization {
        mix: Some(MixConfig::default()),
        mix_off_epoch: Some(2),
        ..Regularization::default()
    };
    let smoothing = 0.1;
    let one_hot = |labels: &Tensor| {
        let off = smoothing / config.num_classes as f64;
        labels.one_hot(config.num_classes).to_kind(Kind::Float) * (1.0 - smoothing) + off
    };
    let batch_of_epoch = |epoch: usize| {
        tch::manual_seed(7);
        let batch = TrainBatch::new(
            &images,
            labels.shallow_clone(),
            &config,
            &regularization,
            smoothing,
            epoch,
        );
        tch::manual_seed(7);
        let notebook = transforms::train_transform(&images, config.image_size);
        (batch, notebook)
    };
    for epoch in [0, 1] {
        let (batch, notebook) = batch_of_epoch(epoch);
        let targets = batch.soft_targets.expect("soft targets");
        assert!(
            !targets.allclose(&one_hot(&labels), 1e-6, 1e-6, false),
            "epoch {epoch}"
        );
        assert!(
            !batch.images.allclose(&notebook, 1e-6, 1e-6, false),
            "epoch {epoch}"
        );
    }
    for epoch in [2, 9] {
        let (batch, notebook) = batch_of_epoch(epoch);
        let targets = batch.soft_targets.expect("the loss stays on soft targets");
        common::assert_close(
            &format!("targets, epoch {epoch}"),
            &targets,
            &one_hot(&labels),
            1e-6,
        );
        common::assert_close(
            &format!("images, epoch {epoch}"),
            &batch.images,
            &notebook,
            0.0,
        );
    }
}

/// With the strong recipe's augmentation (`--auto-augment`, `--rand-augment`,
/// `--random-erasing`), the trainer's batch is the strong pipeline's, not the notebook's crop
/// and flip: from the same draws, the same images as `strong_train_transform` gives.
#[test]
fn a_strong_recipes_batch_is_augmented_by_its_pipeline() {
    let _g = seeded(3);
    let config = ViTConfig::tiny();
    let images = random_u8(&[16, 3, 32, 32]);
    let labels = Tensor::randint(config.num_classes, [16], (Kind::Int64, Device::Cpu));
    let augment = AugmentConfig {
        policy: Some(Policy::default()),
        erasing: Some(RandomErasing::default()),
        ..AugmentConfig::default()
    };
    let regularization = Regularization {
        augment: Some(augment.clone()),
        ..Regularization::default()
    };
    tch::manual_seed(7);
    let batch = TrainBatch::new(&images, labels, &config, &regularization, 0.1, 0);
    tch::manual_seed(7);
    let strong = augment::strong_train_transform(&images, config.image_size, &augment);
    tch::manual_seed(7);
    let notebook = transforms::train_transform(&images, config.image_size);
    common::assert_close("images", &batch.images, &strong, 0.0);
    assert!(!batch.images.allclose(&notebook, 1e-6, 1e-6, false));
    assert!(batch.soft_targets.is_none(), "soft targets without mixing");
}

/// CutMix's weight of the pasted image is the share of pixels that came from it, counted
/// on the output of constant-colour images.
#[test]
fn cutmix_weight_is_the_pasted_area() {
    let _g = seeded(7);
    let (b, h, w) = (4, 16, 20);
    let colours = [-1.5f64, -0.5, 0.5, 1.5];
    let images = Tensor::from_slice(&colours)
        .to_kind(Kind::Float)
        .view([b, 1, 1, 1])
        .expand([b, 3, h, w], false)
        .contiguous();
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let mut pasted_somewhere = 0;
    for mode in [MixMode::Elem, MixMode::Batch] {
        let cfg = MixConfig {
            mixup_alpha: 0.0,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            mode,
        };
        for _ in 0..50 {
            let (out, targets) = mix::mix(&images, &labels, 4, &cfg, 0.0);
            for i in 0..b {
                let partner = b - 1 - i;
                let img = out.get(i);
                let from_partner = img
                    .eq(colours[partner as usize])
                    .sum(Kind::Int64)
                    .int64_value(&[]) as f64
                    / (3 * h * w) as f64;
                let own = img
                    .eq(colours[i as usize])
                    .sum(Kind::Int64)
                    .int64_value(&[]) as f64
                    / (3 * h * w) as f64;
                assert!((own + from_partner - 1.0).abs() < 1e-12, "only two colours");
                let t = to_vec(&targets.get(i));
                assert!((t[partner as usize] - from_partner).abs() < 1e-6, "{t:?}");
                assert!((t[i as usize] - own).abs() < 1e-6, "{t:?}");
                assert!((t.iter().sum::<f64>() - 1.0).abs() < 1e-6);
                if from_partner > 0.0 {
                    pasted_somewhere += 1;
                }
            }
        }
    }
    assert!(
        pasted_somewhere > 100,
        "CutMix pasted {pasted_somewhere} times"
    );
}

/// The colours of [`six_colour_batch`]'s images.
const SIX_COLOURS: [f64; 6] = [-2.0, -1.0, 0.0, 0.5, 1.0, 3.0];

/// Six images, each of one of [`SIX_COLOURS`], float [6, 3, 4, 4], with labels int64 [6].
fn six_colour_batch() -> (Tensor, Tensor) {
    let images = Tensor::from_slice(&SIX_COLOURS)
        .to_kind(Kind::Float)
        .view([-1, 1, 1, 1])
        .expand([-1, 3, 4, 4], false)
        .contiguous();
    (images, Tensor::from_slice(&[3i64, 1, 4, 7, 5, 9]))
}

/// Mixes constant-colour images with MixUp alone (both modes) and checks each image's
/// targets against timm's `mixup_target`: `lam * y + (1 - lam) * y'` of the smoothed one-hot
/// targets (off value `smoothing / K`, on value `1 - smoothing + smoothing / K`) of its own
/// label and its partner's, with `lam` read off the mixed image.
fn assert_mixup_targets_are_the_mixing_weights(smoothing: f64) {
    let (b, classes) = (SIX_COLOURS.len() as i64, 10);
    let (images, labels) = six_colour_batch();
    let colours = SIX_COLOURS;
    let label_of = to_vec(&labels);
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    // An unmixed image (lam 1) would pass the checks below too: most must be mixed.
    let (mut mixed, mut images_seen) = (0, 0);
    for mode in [MixMode::Elem, MixMode::Batch] {
        let cfg = MixConfig {
            mixup_alpha: 0.8,
            cutmix_alpha: 0.0,
            mode,
            ..MixConfig::default()
        };
        for _ in 0..20 {
            let (out, targets) = mix::mix(&images, &labels, classes, &cfg, smoothing);
            assert_eq!(targets.size(), [b, classes]);
            let sums = to_vec(&targets.sum_dim_intlist([1i64].as_slice(), false, Kind::Double));
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
            for i in 0..b as usize {
                let partner = b as usize - 1 - i;
                // out = lam * own + (1 - lam) * partner, so lam is read off the image.
                let v = to_vec(&out.get(i as i64))[0];
                let lam = (v - colours[partner]) / (colours[i] - colours[partner]);
                images_seen += 1;
                mixed += usize::from(lam > 0.01 && lam < 0.99);
                let smoothed = |label: f64| {
                    let mut y = vec![off; classes as usize];
                    y[label as usize] = on;
                    y
                };
                let (own, other) = (smoothed(label_of[i]), smoothed(label_of[partner]));
                let expected: Vec<f64> = own
                    .iter()
                    .zip(&other)
                    .map(|(y, y2)| lam * y + (1.0 - lam) * y2)
                    .collect();
                let t = to_vec(&targets.get(i as i64));
                for (a, e) in t.iter().zip(&expected) {
                    assert!(
                        (a - e).abs() < 1e-5,
                        "smoothing {smoothing}, image {i}: {t:?} vs {expected:?}"
                    );
                }
            }
        }
    }
    // Beta(0.8, 0.8) puts 4% of its weight outside [0.01, 0.99].
    assert!(
        mixed * 4 > images_seen * 3,
        "{mixed} of {images_seen} images mixed"
    );
}

#[test]
fn mixup_targets_are_the_mixing_weights() {
    let _g = seeded(8);
    assert_mixup_targets_are_the_mixing_weights(0.0);
    let classes = 10;
    let (images, labels) = six_colour_batch();
    // Smoothed targets still sum to 1, and prob = 0 leaves the batch alone.
    let cfg = MixConfig {
        prob: 0.0,
        ..MixConfig::default()
    };
    let (out, targets) = mix::mix(&images, &labels, classes, &cfg, 0.1);
    assert!(out.equal(&images));
    let sums = to_vec(&targets.sum_dim_intlist([1i64].as_slice(), false, Kind::Double));
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
    let expected = labels.one_hot(classes).to_kind(Kind::Float) * 0.9 + 0.01;
    assert!(targets.allclose(&expected, 1e-6, 1e-6, false));
}

/// Label smoothing applies to both images' labels of a mix, as in timm's `mixup_target`.
#[test]
fn smoothed_mixup_targets_mix_the_smoothed_one_hot_targets() {
    let _g = seeded(18);
    assert_mixup_targets_are_the_mixing_weights(0.1);
}

/// A batch of `n` constant images of one channel, float64 [n, 1, h, w]: 0 for the first
/// half, 1 for the second, so that every image and its partner (its mirror in the batch,
/// as timm pairs them) are 0 and 1. In float64, a MixUp weight very near 0 or 1 does not
/// round to it.
fn black_and_white(n: i64, h: i64, w: i64) -> Tensor {
    Tensor::arange(n, (Kind::Int64, Device::Cpu))
        .ge(n / 2)
        .to_kind(Kind::Double)
        .view([n, 1, 1, 1])
        .expand([n, 1, h, w], false)
        .contiguous()
}

/// What `mix` did to each image of a [`black_and_white`] batch.
struct Mixed {
    /// The weight of the image's own colour: 1 - the mean distance of its pixels to it
    /// (MixUp's λ, CutMix's share of pixels not pasted over, 1 untouched).
    lam: Vec<f64>,
    /// Whether every pixel is 0 or 1: CutMix (or untouched), as a MixUp pixel lies between.
    cut: Vec<bool>,
    /// Whether every pixel is the image's own colour.
    untouched: Vec<bool>,
}

fn read_mixed(images: &Tensor, out: &Tensor) -> Mixed {
    let per_image = |t: Tensor| t.flatten(1, -1);
    let distance = per_image((out - images).abs());
    let bools = |t: Tensor| Vec::<bool>::try_from(t).unwrap();
    Mixed {
        lam: to_vec(&(1.0 - distance.mean_dim(1, false, Kind::Double))),
        cut: bools(per_image(out * (1.0 - out)).abs().amax(1, false).eq(0.0)),
        untouched: bools(distance.amax(1, false).eq(0.0)),
    }
}

/// The images of `mixed` where `which` holds.
fn lams_where(mixed: &Mixed, which: impl Fn(usize) -> bool) -> Vec<f64> {
    (0..mixed.lam.len())
        .filter(|&i| which(i))
        .map(|i| mixed.lam[i])
        .collect()
}

/// Checks the mean and variance of `values`, independent draws, against a distribution's
/// `mean`, variance `var` and fourth central moment `m4`, to 6 standard errors: sqrt(var /
/// n) for the mean and sqrt((m4 - var^2) / n) for the variance.
fn assert_moments(what: &str, values: &[f64], mean: f64, var: f64, m4: f64) {
    let n = values.len() as f64;
    let sample_mean = values.iter().sum::<f64>() / n;
    let sample_var = values
        .iter()
        .map(|v| (v - sample_mean).powi(2))
        .sum::<f64>()
        / n;
    common::assert_within_6_sigma(
        &format!("{what}: mean of {n}"),
        sample_mean,
        mean,
        (var / n).sqrt(),
    );
    common::assert_within_6_sigma(
        &format!("{what}: variance of {n}"),
        sample_var,
        var,
        ((m4 - var * var) / n).sqrt(),
    );
}

/// Beta(a, a)'s mean, variance 1 / (4 (2a + 1)) and fourth central moment: its excess
/// kurtosis is -6 / (2a + 3).
fn beta_moments(a: f64) -> (f64, f64, f64) {
    let var = 1.0 / (4.0 * (2.0 * a + 1.0));
    (0.5, var, var * var * (3.0 - 6.0 / (2.0 * a + 3.0)))
}

/// Mean, variance and fourth central moment of CutMix's corrected λ on `h` x `w` images,
/// its λ drawn from Beta(alpha, alpha) (a whole alpha), computed without sampling. timm's
/// `rand_bbox` pastes a box of sides 2 floor(floor(h sqrt(1 - λ)) / 2) and
/// 2 floor(floor(w sqrt(1 - λ)) / 2), centred at a uniform pixel and clipped; the
/// corrected λ is 1 - its area / (h w), the product of two independent sides' shares.
/// Their moments, averaged over the h (w) centres, are integrated against the Beta density
/// λ^(α-1) (1-λ)^(α-1) / B(α, α) by the midpoint rule.
fn cutmix_lam_moments(alpha: i32, h: i64, w: i64) -> (f64, f64, f64) {
    let factorial = |k: i32| (1..=k).map(f64::from).product::<f64>();
    let beta = factorial(alpha - 1).powi(2) / factorial(2 * alpha - 1);
    let steps = 100_000;
    // raw[k] = E[(area share)^k], k = 1..=4.
    let mut raw = [0.0f64; 5];
    for step in 0..steps {
        let lam = (step as f64 + 0.5) / steps as f64;
        let density = (lam * (1.0 - lam)).powi(alpha - 1) / beta / steps as f64;
        // side(n)[k] = E[(the box's share of a side of n pixels)^k] over the n centres.
        let side = |n: i64| {
            let half = ((n as f64 * (1.0 - lam).sqrt()).floor() / 2.0).floor() as i64;
            let mut side = [0.0f64; 5];
            for centre in 0..n {
                let len = ((centre + half).min(n) - (centre - half).max(0)) as f64 / n as f64;
                for (k, moment) in side.iter_mut().enumerate() {
                    *moment += len.powi(k as i32) / n as f64;
                }
            }
            side
        };
        let (rows, cols) = (side(h), side(w));
        for k in 1..5 {
            raw[k] += density * rows[k] * cols[k];
        }
    }
    let mean = raw[1];
    let var = raw[2] - mean * mean;
    let m4 = raw[4] - 4.0 * raw[3] * mean + 6.0 * raw[2] * mean.powi(2) - 3.0 * mean.powi(4);
    // λ = 1 - area share: the same variance and fourth moment.
    (1.0 - mean, var, m4)
}

/// MixUp's λ follows timm's Beta(alpha, alpha), one draw per image in `elem` mode and per
/// batch in `batch` mode (alpha 0.8: variance 1/10.4; a uniform λ would have 1/12).
#[test]
fn mixup_weights_follow_beta_alpha_alpha() {
    let _g = seeded(20);
    let (mean, var, m4) = beta_moments(0.8);
    let cfg = MixConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 0.0,
        mode: MixMode::Elem,
        ..MixConfig::default()
    };
    let images = black_and_white(100_000, 1, 1);
    let labels = Tensor::zeros([100_000], (Kind::Int64, Device::Cpu));
    let (out, _) = mix::mix(&images, &labels, 2, &cfg, 0.0);
    let mixed = read_mixed(&images, &out);
    assert!(
        !mixed.cut.iter().any(|&cut| cut),
        "MixUp alone, every image mixed"
    );
    assert_moments("elem mode", &mixed.lam, mean, var, m4);

    // In batch mode, every image of a batch has the batch's λ.
    let cfg = MixConfig {
        mode: MixMode::Batch,
        ..cfg
    };
    let images = black_and_white(4, 1, 1);
    let labels = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let lams: Vec<f64> = (0..3000)
        .map(|_| {
            let (out, _) = mix::mix(&images, &labels, 2, &cfg, 0.0);
            let lam = read_mixed(&images, &out).lam;
            assert!(lam.iter().all(|&l| (l - lam[0]).abs() < 1e-12), "{lam:?}");
            lam[0]
        })
        .collect();
    assert_moments("batch mode", &lams, mean, var, m4);
}

/// With both on, CutMix is chosen with probability `switch_prob` (0.2 here, where a
/// comparison the wrong way round would give 0.8), and each op draws λ from its own Beta:
/// alphas 0.5 (MixUp) and 4 (CutMix), far apart, so that swapped ones show in both.
#[test]
fn with_both_on_cutmix_takes_switch_prob_of_the_images_and_each_its_own_alpha() {
    let _g = seeded(21);
    let (n, h) = (8192, 16);
    let cfg = MixConfig {
        mixup_alpha: 0.5,
        cutmix_alpha: 4.0,
        prob: 1.0,
        switch_prob: 0.2,
        mode: MixMode::Elem,
    };
    let images = black_and_white(n, h, h);
    let labels = Tensor::zeros([n], (Kind::Int64, Device::Cpu));
    let (out, _) = mix::mix(&images, &labels, 2, &cfg, 0.0);
    let mixed = read_mixed(&images, &out);
    let cut = mixed.cut.iter().filter(|&&cut| cut).count();
    common::assert_binomial_count("images CutMix", cut, n as usize, 0.2);

    let mixup = lams_where(&mixed, |i| !mixed.cut[i]);
    let (mean, var, m4) = beta_moments(0.5);
    assert_moments("MixUp's λ", &mixup, mean, var, m4);
    let cutmix = lams_where(&mixed, |i| mixed.cut[i]);
    let (mean, var, m4) = cutmix_lam_moments(4, h, h);
    assert_moments("CutMix's corrected λ", &cutmix, mean, var, m4);
}

/// CutMix's box on non-square images is timm's `rand_bbox`: int(H sqrt(1 - λ)) rows by
/// int(W sqrt(1 - λ)) columns, its centre uniform over every row and column, clipped to
/// the image (to row H and column W, ends excluded). Its corrected λ must have the moments
/// [`cutmix_lam_moments`] computes for 5 x 12 and 12 x 5 images: on square images, or with
/// the box's height taken from the width, or clipped a row short of the bottom, they differ.
#[test]
fn cutmix_boxes_of_non_square_images_follow_timm() {
    let _g = seeded(24);
    let n = 16_384;
    let cfg = MixConfig {
        mixup_alpha: 0.0,
        cutmix_alpha: 1.0,
        prob: 1.0,
        switch_prob: 0.5,
        mode: MixMode::Elem,
    };
    let labels = Tensor::zeros([n], (Kind::Int64, Device::Cpu));
    for (h, w) in [(5, 12), (12, 5)] {
        let images = black_and_white(n, h, w);
        let (out, _) = mix::mix(&images, &labels, 2, &cfg, 0.0);
        let mixed = read_mixed(&images, &out);
        assert!(mixed.cut.iter().all(|&cut| cut), "CutMix alone");
        let (mean, var, m4) = cutmix_lam_moments(1, h, w);
        assert_moments(&format!("CutMix's λ on {h}x{w}"), &mixed.lam, mean, var, m4);
    }
}

/// With `prob` 0.3, 70% of the images (in `elem` mode, each image on its own) or of the
/// batches (in `batch` mode, all of a batch or none) stay as they were.
#[test]
fn mix_prob_is_the_share_of_images_or_batches_mixed() {
    let _g = seeded(22);
    let cfg = MixConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 0.0,
        prob: 0.3,
        switch_prob: 0.5,
        mode: MixMode::Elem,
    };
    let n = 20_000;
    let images = black_and_white(n, 1, 1);
    let labels = Tensor::zeros([n], (Kind::Int64, Device::Cpu));
    let (out, _) = mix::mix(&images, &labels, 2, &cfg, 0.0);
    let untouched = read_mixed(&images, &out).untouched;
    let count = untouched.iter().filter(|&&u| u).count();
    common::assert_binomial_count("images untouched, elem mode", count, n as usize, 0.7);

    let cfg = MixConfig {
        mode: MixMode::Batch,
        ..cfg
    };
    let images = black_and_white(4, 1, 1);
    let labels = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let batches = 2000;
    let untouched = (0..batches)
        .filter(|_| {
            let (out, _) = mix::mix(&images, &labels, 2, &cfg, 0.0);
            let untouched = read_mixed(&images, &out).untouched;
            assert!(
                untouched.iter().all(|&u| u == untouched[0]),
                "{untouched:?}"
            );
            untouched[0]
        })
        .count();
    common::assert_binomial_count("batches untouched, batch mode", untouched, batches, 0.7);
}

#[test]
fn soft_target_cross_entropy_of_one_hot_targets_is_cross_entropy() {
    let _g = seeded(9);
    let logits = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(5, [8], (Kind::Int64, Device::Cpu));
    let soft = mix::soft_target_cross_entropy(&logits, &labels.one_hot(5));
    let hard = logits.cross_entropy_for_logits(&labels);
    assert!((soft.double_value(&[]) - hard.double_value(&[])).abs() < 1e-5);
}

#[test]
fn random_erasing_erases_one_rectangle_in_the_scale_range() {
    let _g = seeded(10);
    let (b, h, w) = (128, 32, 40);
    let images = Tensor::ones([b, 3, h, w], (Kind::Float, Device::Cpu));
    let cfg = RandomErasing {
        p: 0.0,
        ..RandomErasing::default()
    };
    assert!(augment::random_erasing(&images, &cfg).equal(&images));
    let cfg = RandomErasing {
        p: 1.0,
        value: 0.0,
        ..RandomErasing::default()
    };
    let out = augment::random_erasing(&images, &cfg);
    let mut erased = 0;
    for i in 0..b {
        let img = out.get(i);
        let zero = img.eq(0.0);
        // The same rectangle in every channel.
        assert!(zero.get(0).equal(&zero.get(1)) && zero.get(0).equal(&zero.get(2)));
        let zero = zero.get(0);
        let count = zero.sum(Kind::Int64).int64_value(&[]);
        if count == 0 {
            continue; // no attempt fitted: left alone, as torchvision
        }
        erased += 1;
        let rows = to_vec(&zero.any_dim(1, false).to_kind(Kind::Int64));
        let cols = to_vec(&zero.any_dim(0, false).to_kind(Kind::Int64));
        let rh = rows.iter().filter(|&&r| r > 0.0).count() as f64;
        let rw = cols.iter().filter(|&&c| c > 0.0).count() as f64;
        assert_eq!(count as f64, rh * rw, "image {i}: not a rectangle");
        // Sides are round(sqrt(area * ratio)) and round(sqrt(area / ratio)).
        let area = (h * w) as f64;
        assert!(
            (rh + 0.5) * (rw + 0.5) >= cfg.scale.0 * area,
            "image {i}: too small"
        );
        assert!(
            (rh - 0.5) * (rw - 0.5) <= cfg.scale.1 * area,
            "image {i}: too large"
        );
        let ratio = rh / rw;
        assert!(ratio > 0.2 && ratio < 5.0, "image {i}: ratio {ratio}");
    }
    assert!(erased >= 120, "only {erased} of {b} images erased");
}

/// Random erasing's probability is each image's own draw: at p = 0.25, a quarter of a large
/// batch is erased (not all, nor none), and batches of four are erased in part as often as
/// independent draws make them. Rectangles of one aspect and a tenth to a fifth of the
/// image always fit, so that p alone decides.
#[test]
fn random_erasing_erases_each_image_with_probability_p() {
    let _g = seeded(23);
    let cfg = RandomErasing {
        p: 0.25,
        scale: (0.1, 0.2),
        ratio: (1.0, 1.0),
        value: 0.0,
    };
    let erased_in = |batch: i64| -> Vec<bool> {
        let images = Tensor::ones([batch, 1, 16, 16], (Kind::Float, Device::Cpu));
        erased_rectangles(&augment::random_erasing(&images, &cfg))
            .into_iter()
            .map(|(_, _, height, width)| height * width > 0)
            .collect()
    };
    let n = 20_000;
    let erased = erased_in(n as i64).into_iter().filter(|&e| e).count();
    common::assert_binomial_count("images erased", erased, n, 0.25);
    // Batches of four: some but not all erased with probability 1 - 0.75^4 - 0.25^4.
    let batches = 2000;
    let mixed = (0..batches)
        .filter(|_| {
            let erased = erased_in(4);
            erased.iter().any(|&e| e) && !erased.iter().all(|&e| e)
        })
        .count();
    let p_mixed = 1.0 - 0.75f64.powi(4) - 0.25f64.powi(4);
    common::assert_binomial_count("batches erased in part", mixed, batches, p_mixed);
}

/// The rectangle random erasing set to 0 in each image of a batch of ones: (top, left,
/// height, width) of the zeros of channel 0 (height and width 0 where nothing was erased).
fn erased_rectangles(out: &Tensor) -> Vec<(i64, i64, i64, i64)> {
    let zero = out.select(1, 0).eq(0.0);
    let rows = zero.any_dim(2, false).to_kind(Kind::Int64);
    let cols = zero.any_dim(1, false).to_kind(Kind::Int64);
    let first = |t: &Tensor| Vec::<i64>::try_from(t.argmax(1, false)).unwrap();
    let count = |t: &Tensor| {
        Vec::<i64>::try_from(t.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)).unwrap()
    };
    let (top, left, height, width) = (first(&rows), first(&cols), count(&rows), count(&cols));
    (0..top.len())
        .map(|i| (top[i], left[i], height[i], width[i]))
        .collect()
}

/// As torchvision (`if not (h < img_h and w < img_w): continue`), an attempt whose rectangle
/// is as tall or as wide as the image is drawn again, never erased: with areas of 25-33% of
/// 10 x 10 images and aspect ratios of 3-3.3, about half the attempts round to a 10 x 3
/// strip, and every image must get a 9 x 3 rectangle instead (3 x 9 turned sideways).
#[test]
fn random_erasing_never_erases_the_whole_height_or_width() {
    let _g = seeded(25);
    let (b, side) = (1000, 10);
    let images = Tensor::ones([b, 3, side, side], (Kind::Float, Device::Cpu));
    for (ratio, sides) in [((3.0, 3.3), (9, 3)), ((1.0 / 3.3, 1.0 / 3.0), (3, 9))] {
        let cfg = RandomErasing {
            p: 1.0,
            scale: (0.25, 0.33),
            ratio,
            value: 0.0,
        };
        let rectangles = erased_rectangles(&augment::random_erasing(&images, &cfg));
        let erased: Vec<(i64, i64)> = rectangles
            .iter()
            .filter(|r| r.2 > 0)
            .map(|r| (r.2, r.3))
            .collect();
        // All 10 attempts too large: about 0.55^10 of the images, left as they are.
        assert!(erased.len() >= 980, "only {} of {b} erased", erased.len());
        assert!(
            erased.iter().all(|&s| s == sides),
            "ratio {ratio:?}: {erased:?}"
        );
    }
}

/// Random erasing places its rectangle uniformly over every position where it fits, as
/// torchvision's `randint(0, img_h - h + 1)` and `randint(0, img_w - w + 1)`: a 4 x 4
/// rectangle (an area of exactly a quarter, an aspect ratio of exactly 1) on 8 x 8 images
/// starts at each of the rows 0..=4, and each of the columns 0..=4, a fifth of the time, so
/// the last row and column are erased as often as the first.
#[test]
fn random_erasing_places_the_rectangle_uniformly() {
    let _g = seeded(26);
    let b = 10_000;
    let images = Tensor::ones([b, 3, 8, 8], (Kind::Float, Device::Cpu));
    let cfg = RandomErasing {
        p: 1.0,
        scale: (0.25, 0.25),
        ratio: (1.0, 1.0),
        value: 0.0,
    };
    let rectangles = erased_rectangles(&augment::random_erasing(&images, &cfg));
    assert!(rectangles.iter().all(|r| (r.2, r.3) == (4, 4)));
    for start in 0..=4 {
        let tops = rectangles.iter().filter(|r| r.0 == start).count();
        common::assert_binomial_count(&format!("top row {start}"), tops, b as usize, 0.2);
        let lefts = rectangles.iter().filter(|r| r.1 == start).count();
        common::assert_binomial_count(&format!("left column {start}"), lefts, b as usize, 0.2);
    }
}

#[test]
fn strong_transform_keeps_the_pixel_range_and_normalizes() {
    let _g = seeded(11);
    let images = random_u8(&[64, 3, 32, 32]);
    let cfg = AugmentConfig {
        erasing: None,
        ..AugmentConfig::default()
    };
    let x = augment::strong_train_transform(&images, 48, &cfg);
    assert_eq!(x.size(), [64, 3, 48, 48]);
    assert_normalised_pixels(&x, "strong transform");
    // No policy, no erasing, no flip, no crop: the notebook's test transform.
    let plain = AugmentConfig {
        crop_padding: 0,
        flip_prob: 0.0,
        policy: None,
        erasing: None,
        ..AugmentConfig::default()
    };
    let x = augment::strong_train_transform(&images, 32, &plain);
    assert!(x.equal(&transforms::test_transform(&images, 32)));
}

/// With crop and flip off, the strong transform is the policy on the uint8 batch, then the
/// test transform: a policy of `Invert` alone gives the test transform of the inverted
/// images, at the stored size and resized. The policy's geometric ops resample with the
/// configured interpolation: a bilinear policy's rotation by ±M is one of the two single-op
/// bilinear rotations.
#[test]
fn strong_transform_runs_the_policy_before_the_test_transform() {
    let _g = seeded(16);
    let images = random_u8(&[16, 3, 32, 32]);
    let only = |op| AugmentConfig {
        crop_padding: 0,
        flip_prob: 0.0,
        policy: Some(Policy::RandAugment(RandAugment {
            num_ops: 1,
            magnitude: 20,
            ops: vec![op],
            ..RandAugment::default()
        })),
        interpolation: Interpolation::Bilinear,
        erasing: None,
    };
    let inverted = augment::invert(&images);
    for size in [32, 48] {
        let x = augment::strong_train_transform(&images, size, &only(AugOp::Invert));
        assert!(
            x.equal(&transforms::test_transform(&inverted, size)),
            "size {size}"
        );
    }
    let x = augment::strong_train_transform(&images, 32, &only(AugOp::Rotate));
    let bins = RandAugment::default().num_magnitude_bins;
    let degrees = AugOp::Rotate.magnitude(20, bins, 32, 32).0;
    for i in 0..16 {
        let image = images.narrow(0, i, 1);
        let rotated = [degrees, -degrees].map(|m| {
            let out = apply_op(&image, AugOp::Rotate, &full(1, m), Interpolation::Bilinear);
            transforms::test_transform(&out, 32)
        });
        let out = x.narrow(0, i, 1);
        assert!(
            rotated.iter().any(|r| out.equal(r)),
            "image {i}: not a bilinear rotation by ±{degrees}°"
        );
    }
}

/// Random erasing comes last, on the normalized floats: with p = 1 and nothing else on,
/// every image is the test transform's but for one rectangle, the same in every channel,
/// that holds exactly `value` (so 0 is the dataset mean, not black).
#[test]
fn strong_transform_erases_one_rectangle_of_the_normalized_batch() {
    let _g = seeded(17);
    let (b, size) = (32, 48);
    let images = random_u8(&[b, 3, 32, 32]);
    let plain = transforms::test_transform(&images, size);
    for value in [0.0, 1.5] {
        let cfg = AugmentConfig {
            crop_padding: 0,
            flip_prob: 0.0,
            policy: None,
            interpolation: Interpolation::Nearest,
            erasing: Some(RandomErasing {
                p: 1.0,
                value,
                ..RandomErasing::default()
            }),
        };
        let x = augment::strong_train_transform(&images, size, &cfg);
        assert_eq!(x.size(), plain.size());
        for i in 0..b {
            let (out, plain) = (x.get(i), plain.get(i));
            let changed = out.ne_tensor(&plain);
            let case = format!("value {value}, image {i}");
            assert!(
                changed.get(0).equal(&changed.get(1)) && changed.get(0).equal(&changed.get(2)),
                "{case}: not the same pixels in every channel"
            );
            let changed = changed.get(0);
            let count = changed.sum(Kind::Int64).int64_value(&[]);
            assert!(count > 0, "{case}: nothing erased");
            // The rows (or columns) from the first changed one to the last: a rectangle
            // fills the box they span.
            let span = |dim: i64| {
                let at = changed.any_dim(dim, false).nonzero();
                at.max().int64_value(&[]) - at.min().int64_value(&[]) + 1
            };
            assert_eq!(count, span(1) * span(0), "{case}: not one rectangle");
            let erased = out.masked_select(&changed.unsqueeze(0));
            assert!(erased.eq(value).all().int64_value(&[]) == 1, "{case}");
        }
    }
}
