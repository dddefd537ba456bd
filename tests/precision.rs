//! bf16 autocast (through `vit_tch::ffi`), on the CPU, where libtorch runs the same
//! autocast machinery as on CUDA: it must really lower the matmuls, leave the state as it
//! found it, and keep a training step and a test pass close to the fp32 ones. A test pass's
//! accuracy, top-5 accuracy and confusion matrix are checked against predictions counted
//! here, and the per-class accuracy against a matrix made by hand.

mod common;

use common::{
    assert_close, cuda_device, devices, fixture, fixture_batch, load_params, randomize, seeded,
};
use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};
use vit_tch::cli::Precision;
use vit_tch::data::{transforms, Split};
use vit_tch::eval::{evaluate, Evaluation};
use vit_tch::ffi::{autocast_bf16, peak_memory};
use vit_tch::model::{ViTConfig, VisionTransformer};
use vit_tch::optim::AdamW;
use vit_tch::train::{train_step, StepOptions};

#[test]
fn bf16_autocast_lowers_linear_layers_and_restores_the_state() {
    let _turn = seeded(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let linear = nn::linear(vs.root(), 8, 4, Default::default());
    let x = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
    let fp32 = linear.forward(&x);
    let bf16 = autocast_bf16(Device::Cpu, || linear.forward(&x));
    assert_eq!(fp32.kind(), Kind::Float);
    assert_eq!(bf16.kind(), Kind::BFloat16);
    // bf16 keeps 8 significant bits: agreement to about 1%.
    assert_close("bf16 linear", &bf16.to_kind(Kind::Float), &fp32, 3e-2);

    // Nested regions: leaving the inner one keeps the outer one on.
    let nested = autocast_bf16(Device::Cpu, || {
        autocast_bf16(Device::Cpu, || ());
        linear.forward(&x)
    });
    assert_eq!(nested.kind(), Kind::BFloat16);
    assert_eq!(linear.forward(&x).kind(), Kind::Float, "autocast left on");

    // A panic inside the region still restores the state.
    let caught = std::panic::catch_unwind(|| autocast_bf16(Device::Cpu, || panic!("inside")));
    assert!(caught.is_err());
    assert_eq!(linear.forward(&x).kind(), Kind::Float, "autocast left on");
}

/// One bf16 training step of the small fixture model against the same step in fp32: the
/// loss and gradient norm agree to bf16 precision, and the parameters stay float32.
#[test]
fn a_bf16_training_step_tracks_the_fp32_one() {
    // The models' initial weights, overwritten below, are still drawn from the global
    // generator: unguarded, they would shift the draws of a seeded test running beside it.
    let _rng = seeded(0);
    let file = fixture("adamw_steps");
    let batch = fixture_batch(&file, Device::Cpu);
    let step = |precision| {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VisionTransformer::new(&vs.root(), &file.config().unwrap()).unwrap();
        load_params(&file, &vs);
        let mut optimizer = AdamW::new(&vs, 0.05).unwrap();
        let options = StepOptions {
            label_smoothing: 0.1,
            clip_grad: 1.0,
            precision,
        };
        let output = train_step(&model, &mut optimizer, &batch, 1e-3, options);
        (vs, output)
    };
    let (_, fp32) = step(Precision::Fp32);
    let (bf16_vs, bf16) = step(Precision::Bf16);
    assert_eq!(bf16.loss.kind(), Kind::Float);
    assert_close("bf16 loss", &bf16.loss, &fp32.loss, 2e-2);
    // An exact match would mean the step never ran in bf16.
    assert!(bf16.loss != fp32.loss, "the bf16 step computed in fp32");
    let fp32_norm = fp32.grad_norm.unwrap();
    let bf16_norm = bf16.grad_norm.unwrap();
    let relative = f64::try_from((&bf16_norm - &fp32_norm).abs() / &fp32_norm).unwrap();
    assert!(
        relative < 0.05,
        "gradient norm off by {relative:.3} in bf16"
    );
    for (name, param) in bf16_vs.variables() {
        assert_eq!(param.kind(), Kind::Float, "{name} is not float32");
        assert!(param.isfinite().all().int64_value(&[]) == 1, "{name}");
    }
}

/// A test pass counts its own predictions (accuracy and confusion matrix), and under bf16
/// autocast (`vit train --eval-precision bf16`), on the CPU and on CUDA where there is one,
/// its loss tracks the fp32 pass's, and so do its predictions.
#[test]
fn a_test_pass_counts_its_predictions_and_bf16_tracks_fp32() {
    let file = fixture("adamw_steps");
    let config = file.config().unwrap();
    let _rng = seeded(0);
    let images = Tensor::randint(
        256,
        [64, config.in_channels, config.image_size, config.image_size],
        (Kind::Uint8, Device::Cpu),
    );
    let labels = Tensor::randint(config.num_classes, [64], (Kind::Int64, Device::Cpu));
    for device in devices() {
        let vs = nn::VarStore::new(device);
        let model = VisionTransformer::new(&vs.root(), &config).unwrap();
        load_params(&file, &vs);
        let split = Split {
            images: images.to_device(device),
            labels: labels.to_device(device),
        };
        let fp32 = evaluate(&model, &split, 16, Precision::Fp32);
        let bf16 = evaluate(&model, &split, 16, Precision::Bf16);
        assert_counts_its_own_predictions(&model, &split, &fp32);
        // An exact match would mean the pass never ran in bf16.
        assert_ne!(
            bf16.loss, fp32.loss,
            "{device:?}: the bf16 pass computed in fp32"
        );
        let relative = (bf16.loss - fp32.loss).abs() / fp32.loss;
        assert!(
            relative < 2e-2,
            "{device:?}: loss off by {relative:.3} in bf16"
        );
        // Rounding may flip a near tie, not more than a few of the 64 images: each image
        // whose class changed moves one count between two cells of the confusion matrix.
        let changed = (&bf16.confusion - &fp32.confusion)
            .abs()
            .sum(Kind::Int64)
            .int64_value(&[])
            / 2;
        assert!(
            changed <= 4,
            "{device:?}: {changed} images changed class in bf16"
        );
    }
}

/// The fp32 pass `evaluation` of `model` over `split` (in batches of 16) against the
/// predictions made here: its accuracy is the share of argmax == label, and its confusion
/// matrix counts each image once at [true class][predicted class], so that its rows sum to
/// the label counts and its columns to the prediction counts.
fn assert_counts_its_own_predictions(
    model: &VisionTransformer,
    split: &Split,
    evaluation: &Evaluation,
) {
    let k = model.config.num_classes as usize;
    let predictions = tch::no_grad(|| {
        let images = split.images.split(16, 0);
        let logits: Vec<Tensor> = images
            .iter()
            .map(|batch| {
                model.forward_t(
                    &transforms::test_transform(batch, model.config.image_size),
                    false,
                )
            })
            .collect();
        Tensor::cat(&logits, 0).argmax(-1, false)
    });
    let predictions = Vec::<i64>::try_from(predictions.to_device(Device::Cpu)).unwrap();
    let labels = Vec::<i64>::try_from(split.labels.to_device(Device::Cpu)).unwrap();
    let correct = predictions
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    assert_eq!(evaluation.images, labels.len() as i64);
    assert_eq!(evaluation.accuracy, correct as f64 / labels.len() as f64);
    let mut expected = vec![vec![0i64; k]; k];
    for (&label, &prediction) in labels.iter().zip(&predictions) {
        expected[label as usize][prediction as usize] += 1;
    }
    let confusion = Vec::<Vec<i64>>::try_from(&evaluation.confusion).unwrap();
    let row_sums: Vec<i64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let column_sums: Vec<i64> = (0..k)
        .map(|j| confusion.iter().map(|row| row[j]).sum())
        .collect();
    let count = |values: &[i64]| {
        (0..k as i64)
            .map(|c| values.iter().filter(|&&v| v == c).count() as i64)
            .collect::<Vec<_>>()
    };
    assert_eq!(row_sums, count(&labels), "rows: the true classes");
    assert_eq!(
        column_sums,
        count(&predictions),
        "columns: the predicted classes"
    );
    assert_eq!(confusion, expected);
}

/// The tiny model with 20 classes on 8x8 images (its config and weights, and itself).
fn twenty_class_model() -> (ViTConfig, nn::VarStore, VisionTransformer) {
    let config = ViTConfig {
        num_classes: 20,
        image_size: 8,
        ..ViTConfig::tiny()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = VisionTransformer::new(&vs.root(), &config).unwrap();
    (config, vs, model)
}

/// The top-5 accuracy counts the images whose label's logit is beaten by fewer than five
/// others (counted here, image by image, on an untrained 20-class model, where it is far
/// from both 0 and 1); a model of five classes or fewer has none.
#[test]
fn top5_accuracy_counts_labels_among_the_five_highest_logits() {
    let _rng = seeded(0);
    let (config, vs, model) = twenty_class_model();
    // Logits spread wider than a fresh head's, so that the ranking is far from a tie.
    randomize(&vs, 0.5);
    let split = Split {
        images: Tensor::randint(256, [100, 3, 8, 8], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::randint(20, [100], (Kind::Int64, Device::Cpu)),
    };
    let evaluation = evaluate(&model, &split, 16, Precision::Fp32);
    let logits =
        tch::no_grad(|| model.forward_t(&transforms::test_transform(&split.images, 8), false));
    let logits = Vec::<Vec<f32>>::try_from(logits).unwrap();
    let labels = Vec::<i64>::try_from(&split.labels).unwrap();
    let in_top5 = logits
        .iter()
        .zip(&labels)
        .filter(|(row, &label)| {
            let beaten_by = row.iter().filter(|&&logit| logit > row[label as usize]);
            beaten_by.count() < 5
        })
        .count();
    assert!((10..90).contains(&in_top5), "{in_top5} of 100");
    assert_eq!(evaluation.top5_accuracy, Some(in_top5 as f64 / 100.0));

    let five_classes = ViTConfig {
        num_classes: 5,
        ..config
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = VisionTransformer::new(&vs.root(), &five_classes).unwrap();
    let split = Split {
        labels: Tensor::randint(5, [100], (Kind::Int64, Device::Cpu)),
        ..split
    };
    assert_eq!(
        evaluate(&model, &split, 16, Precision::Fp32).top5_accuracy,
        None
    );
}

/// A pass over an empty split (a test set with no images) scores 0, as documented, not
/// the NaN that 0 / 0 would give: NaN would pass for a figure in metrics.csv and in
/// `vit eval --json`, and compare false against every best accuracy.
#[test]
fn an_empty_split_scores_0_not_nan() {
    // The model's weights are drawn from the global generator (see above).
    let _rng = seeded(0);
    let (_, _vs, model) = twenty_class_model();
    let split = Split {
        images: Tensor::zeros([0, 3, 8, 8], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
    };
    let evaluation = evaluate(&model, &split, 16, Precision::Fp32);
    assert_eq!(evaluation.images, 0);
    assert_eq!(evaluation.loss, 0.0);
    assert_eq!(evaluation.accuracy, 0.0);
    assert_eq!(evaluation.top5_accuracy, Some(0.0));
    assert_eq!(evaluation.confusion.size(), [20, 20]);
    assert_eq!(evaluation.confusion.sum(Kind::Int64).int64_value(&[]), 0);
    assert_eq!(evaluation.per_class_accuracy(), vec![None; 20]);
}

/// Each class's accuracy is its diagonal cell over its row (its test images), not its
/// column; a class without test images has none.
#[test]
fn per_class_accuracy_is_the_diagonal_over_the_row() {
    // Rows (true classes) of 8, 4 and 0 images; columns (predictions) of 7, 3 and 2.
    let evaluation = Evaluation {
        loss: 1.0,
        accuracy: 7.0 / 12.0,
        top5_accuracy: None,
        images: 12,
        confusion: Tensor::from_slice2(&[[6i64, 2, 0], [1, 1, 2], [0, 0, 0]]),
    };
    assert_eq!(
        evaluation.per_class_accuracy(),
        [Some(6.0 / 8.0), Some(1.0 / 4.0), None]
    );
}

#[test]
fn peak_device_memory_is_only_reported_for_cuda() {
    assert!(peak_memory(Device::Cpu).unwrap().is_none());
    if let Some(device) = cuda_device("the CPU half only") {
        vit_tch::ffi::reset_peak_memory(device).unwrap();
        let before = peak_memory(device).unwrap().unwrap();
        let big = Tensor::zeros([1 << 20], (Kind::Float, device));
        let after = peak_memory(device).unwrap().unwrap();
        assert!(after >= before + 4 * (1 << 20), "{before} -> {after}");
        drop(big);
    }
}
