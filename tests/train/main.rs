//! End-to-end training: a tiny model learns a generated dataset, the run folder is what
//! users rely on, `vit eval` reproduces the reported accuracy, and resuming is exact.

// The shared helpers of every test crate, from the folder above this crate's.
#[path = "../common/mod.rs"]
mod common;
mod divergence;
mod eval;
mod interrupts;
mod learning;
mod make;
mod resume;
mod run_folder;
mod strong_recipe;
mod user_errors;

use common::{seeded, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor};
use vit_tch::cli::{Precision, Recipe};
use vit_tch::data::{Dataset, Split};
use vit_tch::model::ViTConfig;
use vit_tch::train::{self, Outcome, Regularization, RunOptions, TrainSettings};

const NUM_CLASSES: i64 = 10;

/// Images whose colour is decided by their class, plus noise: learnable in seconds.
/// uint8 [n, 3, 32, 32] and int64 labels cycling through the classes.
fn colour_split(n: i64, seed: i64) -> Split {
    tch::manual_seed(seed);
    let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(NUM_CLASSES);
    // Each class gets its own RGB colour from three bits and an intensity.
    let class = labels.to_kind(Kind::Float);
    let channel = |bit: i64| {
        let on = (labels.bitwise_right_shift_tensor_scalar(bit).remainder(2)).to_kind(Kind::Float);
        on * 150.0 + 40.0 + &class * 5.0
    };
    let colours = Tensor::stack(&[channel(0), channel(1), channel(2)], 1).view([n, 3, 1, 1]);
    let noise = Tensor::randn([n, 3, 32, 32], (Kind::Float, Device::Cpu)) * 12.0;
    let images = (colours + noise).clamp(0.0, 255.0).to_kind(Kind::Uint8);
    Split { images, labels }
}

fn colour_dataset() -> Dataset {
    Dataset {
        name: "cifar10".to_string(),
        train: colour_split(600, 1),
        test: colour_split(200, 2),
        classes: (0..NUM_CLASSES).map(|c| format!("colour{c}")).collect(),
    }
}

/// The CIFAR-10 binary layout of a split: 1 label byte + 3,072 pixel bytes per record.
fn cifar10_records(split: &Split) -> Vec<u8> {
    let images: Vec<u8> = Vec::try_from(split.images.flatten(0, -1)).unwrap();
    let labels: Vec<i64> = Vec::try_from(&split.labels).unwrap();
    labels
        .iter()
        .zip(images.chunks(3072))
        .flat_map(|(&label, pixels)| std::iter::once(label as u8).chain(pixels.iter().copied()))
        .collect()
}

/// Writes `dataset` as a cifar-10-batches-bin folder (the training split spread over the
/// five batch files), so the `vit` binary can read it.
fn write_as_cifar10(dataset: &Dataset, data_dir: &Path) {
    let per_file = dataset.train.len() / 5;
    let mut files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let part = Split {
                images: dataset.train.images.narrow(0, i * per_file, per_file),
                labels: dataset.train.labels.narrow(0, i * per_file, per_file),
            };
            (format!("data_batch_{}.bin", i + 1), cifar10_records(&part))
        })
        .collect();
    files.push(("test_batch.bin".into(), cifar10_records(&dataset.test)));
    let class_names = dataset.classes.join("\n") + "\n";
    files.push(("batches.meta.txt".into(), class_names.into_bytes()));
    common::write_cifar10_files(data_dir, files);
}

/// A temporary folder holding the colour dataset as `data/cifar-10-batches-bin`, and
/// that `data` folder.
fn colour_cifar10(name: &str) -> (TempDir, PathBuf) {
    let root = TempDir::new(name);
    let data_dir = root.join("data");
    let dataset = {
        let _turn = seeded(0);
        colour_dataset()
    };
    write_as_cifar10(&dataset, &data_dir);
    (root, data_dir)
}

fn tiny_settings(epochs: usize, batch_size: i64) -> TrainSettings {
    TrainSettings {
        model: ViTConfig {
            patch_size: 8,
            embed_dim: 32,
            num_heads: 2,
            mlp_dim: 64,
            num_layers: 2,
            num_classes: NUM_CLASSES,
            dropout: 0.1,
            ..ViTConfig::notebook()
        },
        dataset: "cifar10".to_string(),
        data_dir: PathBuf::from("unused"),
        epochs,
        batch_size,
        lr: 3e-3,
        weight_decay: 0.05,
        warmup_epochs: 1,
        label_smoothing: 0.1,
        clip_grad: 1.0,
        seed: 7,
        train_subset: None,
        recipe: Recipe::Notebook,
        regularization: Regularization::default(),
        precision: Precision::Fp32,
        eval_precision: Precision::Fp32,
    }
}

fn read_metrics(run: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(run.join("metrics.csv")).unwrap();
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// Checks metrics.csv's `lr` column (`rows` of a whole run at the tests' lr of 3e-3): each
/// epoch's is the schedule's at its last step.
fn assert_lr_column(rows: &[Vec<String>], steps_per_epoch: usize, warmup_epochs: usize) {
    let (warmup, total) = (
        warmup_epochs * steps_per_epoch,
        rows.len() * steps_per_epoch,
    );
    for (epoch, row) in rows.iter().enumerate() {
        let last_step = (epoch + 1) * steps_per_epoch - 1;
        let expected = vit_tch::optim::learning_rate(3e-3, last_step, warmup, total);
        let lr: f64 = row[1].parse().unwrap();
        let epoch = epoch + 1;
        assert!(
            (lr - expected).abs() <= 1e-12,
            "epoch {epoch}: lr {lr}, not {expected}"
        );
    }
}

/// The line that ends a finished run's output for its best model (`which` "") or best EMA
/// model ("EMA "): its `accuracy` (a fraction), `(epoch, epochs)`: its epoch of the run's,
/// and its `checkpoint`.
fn summary_line(
    which: &str,
    accuracy: f64,
    (epoch, epochs): (usize, usize),
    checkpoint: &Path,
) -> String {
    format!(
        "Best {which}Validation Accuracy: {:.2}% (epoch {epoch} of {epochs}), saved as {}\n",
        100.0 * accuracy,
        checkpoint.display()
    )
}

/// `vit train` of the tiny model on the generated CIFAR-10 folder, on the CPU.
fn tiny_run_args<'a>(data_dir: &'a str, out: &'a str) -> Vec<&'a str> {
    #[rustfmt::skip]
    let args = vec![
        "train", "--dataset", "cifar10", "--data-dir", data_dir, "--out", out,
        "--device", "cpu", "--config", "tiny", "--patch-size", "8",
    ];
    args
}

/// Starts `vit ARGS` (its stdout and stderr captured) and waits for the run folder `run` to get its
/// config.json, which vit writes once its signal handler is installed.
fn start_training<S: AsRef<std::ffi::OsStr>>(args: &[S], run: &Path) -> std::process::Child {
    let child = common::with_default_signals(&mut Command::new(common::vit_binary()))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !run.join("config.json").exists() {
        assert!(started.elapsed().as_secs() < 60, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Waits until the run training in `run` has finished its first epoch (written its row).
fn wait_for_first_epoch(run: &Path) {
    let started = std::time::Instant::now();
    let rows = || {
        std::fs::read_to_string(run.join("metrics.csv")).map_or(0, |text| text.lines().count() - 1)
    };
    // Generous: on a loaded machine an epoch of 600 one-image steps took over a minute.
    while rows() < 1 {
        assert!(started.elapsed().as_secs() < 300, "no epoch finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Trains `settings` into `out`, interrupted (as by Ctrl-C) at the first opportunity when
/// `interrupt` is set; returns the final parameters.
fn run_training(
    settings: &TrainSettings,
    dataset: &Dataset,
    out: &Path,
    resume: bool,
    interrupt: bool,
) -> Outcome {
    let flag = AtomicBool::new(interrupt);
    train::train(settings, dataset, &options(out, resume, &flag)).unwrap()
}

/// The error of a resume of `run` that must be refused, as printed.
fn refused_resume(settings: &TrainSettings, dataset: &Dataset, run: &Path) -> String {
    let flag = AtomicBool::new(false);
    match train::train(settings, dataset, &options(run, true, &flag)) {
        Ok(_) => panic!("the resume of {} was not refused", run.display()),
        Err(error) => format!("{error:#}"),
    }
}

fn options<'a>(out: &'a Path, resume: bool, interrupted: &'a AtomicBool) -> RunOptions<'a> {
    RunOptions {
        out,
        numbered_out: false,
        resume,
        device: Device::Cpu,
        plot: false,
        cuda_graph: None,
        interrupted,
        command: None,
    }
}

/// A model of `config` with fresh weights. Their draws come from libtorch's global
/// generator, which the training tests beside it reseed and draw from, so it takes the
/// generator's turn (`seeded`) as they do: call it without holding one.
fn fresh_model(config: &ViTConfig) -> tch::nn::VarStore {
    let _turn = seeded(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    vit_tch::model::VisionTransformer::new(&vs.root(), config).unwrap();
    vs
}

/// Saves a model of `config` with fresh weights and `metadata` at `path`; returns its store.
fn save_fresh_model(
    config: &ViTConfig,
    metadata: &[(&str, String)],
    path: &Path,
) -> tch::nn::VarStore {
    let vs = fresh_model(config);
    vit_tch::checkpoint::save(&vs, config, metadata, path).unwrap();
    vs
}

/// Asserts that `report` (`vit eval --json` of `checkpoint` on the CIFAR data in
/// `data_dir`) gives the figures of the same evaluation done the notebook's way in PyTorch
/// (tests/reference/eval_reference.py: its own CIFAR reader, torchvision's ToTensor +
/// Normalize, timm's model): the same loss, and the same accuracy and top-5 accuracy, to
/// one image (a near-tie may fall either way).
fn assert_evaluated_as_pytorch_does(
    report: &serde_json::Value,
    checkpoint: &Path,
    data_dir: &Path,
) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/eval_reference.py");
    let reference = Command::new(common::python())
        .arg(script)
        .args([checkpoint.as_os_str(), data_dir.as_os_str()])
        .output()
        .unwrap();
    assert!(
        reference.status.success(),
        "eval_reference.py: {}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&reference.stdout).unwrap();
    assert_eq!(reference["images"], report["images"]);
    let (loss, reference_loss) = (report["loss"].as_f64(), reference["loss"].as_f64());
    assert!(
        (loss.unwrap() - reference_loss.unwrap()).abs() < 1e-5,
        "loss: vit {loss:?}, PyTorch {reference_loss:?}"
    );
    let one_image = 1.0 / report["images"].as_f64().unwrap();
    for key in ["accuracy", "top5_accuracy"] {
        let (vit, pytorch) = (
            report[key].as_f64().unwrap(),
            reference[key].as_f64().unwrap(),
        );
        assert!(
            (vit - pytorch).abs() <= one_image + 1e-12,
            "{key}: vit {vit}, PyTorch {pytorch}"
        );
    }
}
