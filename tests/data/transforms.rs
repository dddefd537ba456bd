//! The notebook's transforms as batched tensor ops: RandomCrop with padding 4,
//! RandomHorizontalFlip, Normalize and resizing, on the CPU and on CUDA where there is one.

use crate::common::cuda_device;
use crate::{common, f32s, i64s, u8s};
use tch::{Device, Kind, Tensor};
use vit_tch::data::{transforms, CIFAR_MEAN, CIFAR_STD};

/// [B,3,H,W] int64 images whose pixel (c, y, x) holds c*10000 + (y+1)*100 + (x+1), so a
/// zero can only be padding.
fn coordinate_images(b: i64, h: i64, w: i64) -> Tensor {
    let c = Tensor::arange(3, (Kind::Int64, Device::Cpu)).view([1, 3, 1, 1]) * 10000;
    let y = (Tensor::arange(h, (Kind::Int64, Device::Cpu)) + 1).view([1, 1, h, 1]) * 100;
    let x = (Tensor::arange(w, (Kind::Int64, Device::Cpu)) + 1).view([1, 1, 1, w]);
    (c + y + x).expand([b, 3, h, w], false).contiguous()
}

/// Checks that every image of `out` is `coordinate_images` shifted by at most `p` rows and
/// columns, zeros exactly where the shift leaves the image; returns how often each row
/// and column shift (-p..=p) occurred.
fn check_crops(out: &Tensor, h: i64, w: i64, p: i64) -> (Vec<usize>, Vec<usize>) {
    let b = out.size()[0];
    assert_eq!(out.size(), [b, 3, h, w]);
    let v = i64s(&out.to_device(Device::Cpu));
    let (hu, wu) = (h as usize, w as usize);
    let mut seen_dy = vec![0usize; 2 * p as usize + 1];
    let mut seen_dx = vec![0usize; 2 * p as usize + 1];
    for i in 0..b as usize {
        let img = &v[i * 3 * hu * wu..(i + 1) * 3 * hu * wu];
        // Some pixel is real (|shift| <= p < size); it gives the shift.
        let k = img.iter().position(|&v| v != 0).unwrap();
        let (y, x) = ((k / wu) % hu, k % wu);
        let (sy, sx) = (img[k] / 100 % 100 - 1, img[k] % 100 - 1);
        let (dy, dx) = (sy - y as i64, sx - x as i64);
        assert!(
            dy.abs() <= p && dx.abs() <= p,
            "shift ({dy}, {dx}) beyond the padding"
        );
        seen_dy[(dy + p) as usize] += 1;
        seen_dx[(dx + p) as usize] += 1;
        for c in 0..3 {
            for y in 0..hu {
                for x in 0..wu {
                    let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                    let inside = (0..h).contains(&yy) && (0..w).contains(&xx);
                    let expected = if inside {
                        c as i64 * 10000 + (yy + 1) * 100 + xx + 1
                    } else {
                        0
                    };
                    assert_eq!(
                        img[(c * hu + y) * wu + x],
                        expected,
                        "image {i} ({c},{y},{x})"
                    );
                }
            }
        }
    }
    (seen_dy, seen_dx)
}

#[test]
fn random_crop_is_a_shifted_window_within_the_padding() {
    let _lock = common::seeded(1);
    let out = transforms::random_crop(&coordinate_images(600, 32, 32), 4);
    let (seen_dy, seen_dx) = check_crops(&out, 32, 32, 4);
    // Every offset occurs (missing one of 9 in 600 draws: p < 1e-29).
    assert!(seen_dy.iter().all(|&n| n > 0), "{seen_dy:?}");
    assert!(seen_dx.iter().all(|&n| n > 0), "{seen_dx:?}");
    // Non-square images keep their size.
    check_crops(
        &transforms::random_crop(&coordinate_images(50, 12, 20), 3),
        12,
        20,
        3,
    );
    // Works on uint8 too, and padding 0 is the identity.
    let u = coordinate_images(2, 8, 8)
        .remainder(256)
        .to_kind(Kind::Uint8);
    assert_eq!(transforms::random_crop(&u, 2).size(), [2, 3, 8, 8]);
    assert_eq!(u8s(&transforms::random_crop(&u, 0)), u8s(&u));
}

/// A crop's row and column offsets are drawn independently: over 600 images, the two
/// differ in about 8 of 9 (equal by chance in 1 of 9).
#[test]
fn random_crop_draws_the_row_and_column_offsets_independently() {
    let _lock = common::seeded(1);
    let out = transforms::random_crop(&coordinate_images(600, 32, 32), 4);
    // The middle pixel of channel 0 is inside every window: (17 + dy) * 100 + 17 + dx.
    let middle = i64s(&out.select(1, 0).select(1, 16).select(1, 16));
    let differ = middle.iter().filter(|&&v| v / 100 != v % 100).count();
    common::assert_binomial_count(
        "crops with other row and column offsets",
        differ,
        600,
        8.0 / 9.0,
    );
}

#[test]
fn horizontal_flip_happens_about_half_the_time() {
    let _lock = common::seeded(2);
    let n = 2000i64;
    let images = coordinate_images(n, 4, 6);
    let out = transforms::random_horizontal_flip(&images, 0.5);
    let same = out.eq_tensor(&images).view([n, -1]).all_dim(1, false);
    let flipped = out
        .eq_tensor(&images.flip([3]))
        .view([n, -1])
        .all_dim(1, false);
    assert!(
        bool::try_from(same.logical_or(&flipped).all()).unwrap(),
        "neither kept nor mirrored"
    );
    let count = flipped.sum(Kind::Int64).int64_value(&[]);
    assert!((800..=1200).contains(&count), "{count} of {n} flipped");
    assert_eq!(
        i64s(&transforms::random_horizontal_flip(&images, 0.0)),
        i64s(&images)
    );
    assert_eq!(
        i64s(&transforms::random_horizontal_flip(&images, 1.0)),
        i64s(&images.flip([3]))
    );
    // p 0 never flips, not even an image whose draw is exactly 0.0 (torchvision flips where
    // `torch.rand(1) < p`): seed 146 draws it for image 18,555 of 32,768.
    let n = 32_768;
    tch::manual_seed(146);
    let draws = Tensor::rand([n], (Kind::Float, Device::Cpu));
    assert_eq!(i64s(&draws.eq(0.0).nonzero()), [18_555], "seed 146's draws");
    let pairs = coordinate_images(n, 1, 2);
    tch::manual_seed(146);
    let out = transforms::random_horizontal_flip(&pairs, 0.0);
    let flipped = out.ne_tensor(&pairs).view([n, -1]).any_dim(1, false);
    assert_eq!(
        i64s(&flipped.nonzero()),
        [0i64; 0],
        "images flipped with p 0"
    );
}

fn random_uint8_batch(b: i64) -> Tensor {
    Tensor::randint(256, [b, 3, 32, 32], (Kind::Uint8, Device::Cpu))
}

#[test]
fn a_fixed_seed_gives_the_same_batch() {
    let _lock = common::seeded(3);
    let images = random_uint8_batch(64);
    tch::manual_seed(42);
    let a = transforms::train_transform(&images, 32);
    tch::manual_seed(42);
    let b = transforms::train_transform(&images, 32);
    tch::manual_seed(43);
    let c = transforms::train_transform(&images, 32);
    assert_eq!(a.size(), [64, 3, 32, 32]);
    assert_eq!(a.kind(), Kind::Float);
    assert!(a.equal(&b));
    assert!(!a.equal(&c));
    let big = transforms::train_transform(&images, 64);
    assert_eq!(big.size(), [64, 3, 64, 64]);
}

/// `train_transform` is the notebook's `RandomCrop(32, padding=4)` then
/// `RandomHorizontalFlip()` (p 0.5), then `ToTensor` and `Normalize`: undoing the
/// normalisation gives back uint8 pixels, each image a window of the zero-padded image
/// shifted by -4..=4 rows and columns (every shift occurring), mirrored about half the time.
/// The pixels carry their coordinates (R = row + 1, G = column + 1, B = 7), so that a zero
/// can only be padding.
#[test]
fn train_transform_is_the_notebooks_crop_with_padding_4_and_flip_with_p_half() {
    let _lock = common::seeded(6);
    let (n, side) = (1000i64, 32i64);
    let options = (Kind::Int64, Device::Cpu);
    let rows = (Tensor::arange(side, options) + 1).view([1, 1, side, 1]);
    let cols = (Tensor::arange(side, options) + 1).view([1, 1, 1, side]);
    let image = Tensor::cat(
        &[
            rows.expand([1, 1, side, side], false),
            cols.expand([1, 1, side, side], false),
            Tensor::full([1, 1, side, side], 7, options),
        ],
        1,
    );
    let images = image.expand([n, 3, side, side], false).to_kind(Kind::Uint8);
    let out = transforms::train_transform(&images, side);
    assert_eq!(out.size(), [n, 3, side, side]);
    // The notebook's Normalize, undone with its constants written out.
    let mean = Tensor::from_slice(&[0.4914, 0.4822, 0.4465]).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&[0.2023, 0.1994, 0.2010]).view([1, 3, 1, 1]);
    let levels = (out.to_kind(Kind::Double) * std + mean) * 255.0;
    let pixels = levels.round();
    assert!(
        (&levels - &pixels).abs().max().double_value(&[]) < 1e-3,
        "not whole uint8 levels"
    );
    let pixels = pixels.to_kind(Kind::Int64);
    // Mirrored: the column numbers fall from left to right (the middle pixels are never
    // padding, as a shift is at most 4).
    let flipped = pixels
        .select(1, 1)
        .select(1, side / 2)
        .select(1, side / 2)
        .lt_tensor(
            &pixels
                .select(1, 1)
                .select(1, side / 2)
                .select(1, side / 2 - 1),
        );
    let mirrored_back = pixels
        .flip([3])
        .where_self(&flipped.view([n, 1, 1, 1]), &pixels);
    // In `coordinate_images`' numbering (channel c, row r, column k as c*10000 + r*100 + k),
    // zero where padding.
    let (r, k) = (mirrored_back.select(1, 0), mirrored_back.select(1, 1));
    let real = r.ne(0).unsqueeze(1);
    let channel = (Tensor::arange(3, options) * 10000).view([1, 3, 1, 1]);
    let numbered =
        (channel + (r * 100 + k).unsqueeze(1)).where_self(&real, &Tensor::zeros([1], options));
    let (seen_dy, seen_dx) = check_crops(&numbered, side, side, 4);
    assert!(seen_dy.iter().all(|&n| n > 0), "{seen_dy:?}");
    assert!(seen_dx.iter().all(|&n| n > 0), "{seen_dx:?}");
    let count = flipped.sum(Kind::Int64).int64_value(&[]) as usize;
    common::assert_binomial_count("mirrored images", count, n as usize, 0.5);
}

#[test]
fn test_transform_is_the_normalize_formula() {
    let _lock = common::seeded(4);
    let images = random_uint8_batch(5);
    let a = transforms::test_transform(&images, 32);
    let b = transforms::test_transform(&images, 32);
    assert!(a.equal(&b));
    // The notebook's `Normalize` constants, written out: CIFAR_MEAN and CIFAR_STD must be
    // these.
    let mean = [0.4914, 0.4822, 0.4465];
    let std = [0.2023, 0.1994, 0.2010];
    assert_eq!((CIFAR_MEAN, CIFAR_STD), (mean, std));
    let pixels = u8s(&images);
    let out = f32s(&a);
    for (i, (&p, &o)) in pixels.iter().zip(&out).enumerate() {
        let c = (i / 1024) % 3;
        let expected = (p as f64 / 255.0 - mean[c]) / std[c];
        assert!((o as f64 - expected).abs() < 1e-5, "{i}: {o} vs {expected}");
    }

    // Resizing a constant image keeps it constant, up and down: every pixel of every
    // channel of every image (each its own value), borders included.
    let values = [[200u8, 17, 96], [0, 255, 128]];
    let constant = Tensor::from_slice(values.as_flattened())
        .view([2, 3, 1, 1])
        .expand([2, 3, 32, 32], false)
        .contiguous();
    for size in [64, 224, 16] {
        let out = transforms::test_transform(&constant, size);
        assert_eq!(out.size(), [2, 3, size, size]);
        let out = f32s(&out);
        let plane = (size * size) as usize;
        for (i, v) in out.iter().enumerate() {
            let (b, c) = (i / (3 * plane), (i / plane) % 3);
            let expected = (values[b][c] as f64 / 255.0 - mean[c]) / std[c];
            assert!(
                (*v as f64 - expected).abs() < 1e-4,
                "{size}: image {b}, channel {c}, pixel {}: {v} vs {expected}",
                i % plane
            );
        }
    }
}

/// A batch that shrinks along one side and grows along the other is antialiased along the
/// side that shrinks, as torchvision's `Resize` (antialias=True) does: rows one in four
/// bright, shrunk 4x (64 -> 16) while the columns grow (8 -> 16), come out a quarter bright
/// away from the edges (each output row averages eight input rows with the triangle filter).
/// A plain bilinear resize would sample two dark rows for each and give 0.
#[test]
fn resizing_down_one_side_and_up_the_other_is_antialiased() {
    let options = (Kind::Int64, Device::Cpu);
    let rows = Tensor::arange(64, options).remainder(4).eq(0);
    let images = rows
        .to_kind(Kind::Float)
        .view([1, 1, 64, 1])
        .expand([2, 3, 64, 8], false);
    let out = transforms::resize(&images, 16);
    assert_eq!(out.size(), [2, 3, 16, 16]);
    let inner = f32s(&out.narrow(2, 1, 14));
    assert!(
        inner.iter().all(|&v| (v - 0.25).abs() < 1e-5),
        "{:?}",
        &inner[..16]
    );
}

/// The transforms' constants are uploaded once per device and then shared: the values
/// arrive exactly, on the device asked for, and a second request is the same storage.
#[test]
fn device_constants_are_uploaded_once() {
    let values = [0.25, -1.5, 1e-3, 7.0];
    for device in common::devices() {
        let first = transforms::device_constants(&values, device);
        assert_eq!(first.device(), device);
        assert_eq!(first.kind(), Kind::Double);
        let back = Vec::<f64>::try_from(first.to_device(Device::Cpu)).unwrap();
        assert_eq!(back, values);
        let again = transforms::device_constants(&values, device);
        assert_eq!(
            first.data_ptr(),
            again.data_ptr(),
            "{device:?}: uploaded twice"
        );
        let other = transforms::device_constants(&values[..3], device);
        assert_ne!(
            first.data_ptr(),
            other.data_ptr(),
            "{device:?}: other values"
        );
        assert_eq!(other.size(), [3]);
    }
}

/// The same invariants on the GPU, where there is one (skipped otherwise).
#[test]
fn transforms_on_cuda_when_available() {
    let Some(cuda) = cuda_device("skipped") else {
        return;
    };
    let _lock = common::seeded(5);
    let out = transforms::random_crop(&coordinate_images(600, 32, 32).to_device(cuda), 4);
    assert_eq!(out.device(), cuda);
    let (seen_dy, seen_dx) = check_crops(&out, 32, 32, 4);
    assert!(seen_dy.iter().all(|&n| n > 0) && seen_dx.iter().all(|&n| n > 0));

    let images = coordinate_images(2000, 4, 6).to_device(cuda);
    let flipped = transforms::random_horizontal_flip(&images, 0.5)
        .eq_tensor(&images.flip([3]))
        .view([2000, -1])
        .all_dim(1, false);
    let count = flipped.sum(Kind::Int64).int64_value(&[]);
    assert!((800..=1200).contains(&count), "{count} of 2000 flipped");

    let batch = random_uint8_batch(64);
    let on_gpu = batch.to_device(cuda);
    tch::manual_seed(42);
    let a = transforms::train_transform(&on_gpu, 64);
    tch::manual_seed(42);
    let b = transforms::train_transform(&on_gpu, 64);
    assert_eq!(a.device(), cuda);
    assert_eq!(a.size(), [64, 3, 64, 64]);
    assert!(a.equal(&b));
    for size in [32, 64] {
        let gpu = transforms::test_transform(&on_gpu, size).to_device(Device::Cpu);
        let cpu = transforms::test_transform(&batch, size);
        assert!(gpu.allclose(&cpu, 1e-4, 1e-4, false), "size {size}");
    }
}
