//! `vit train`: the notebook's training loop, with a run folder that survives crashes.
//!
//! Each epoch: shuffle, augment on the device, AdamW steps with warm-up + cosine learning
//! rate, then the test-set "Validation Accuracy", one metrics.csv row, last_model and (on
//! improvement) best_model. `resume.safetensors` holds everything else a run needs to
//! continue exactly where it stopped, even mid-epoch.

use crate::checkpoint::{self, TensorFile};
use crate::cli::{Precision, TrainArgs};
use crate::data::{self, transforms, Dataset};
use crate::eval::evaluate;
use crate::fsutil::write_atomic;
use crate::model::{ViTConfig, VisionTransformer};
use crate::optim::{clip_grad_norm, learning_rate, AdamW};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, nn::ModuleT, Device, Kind, Reduction, Tensor};

pub const METRICS_HEADER: [&str; 8] = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epoch_seconds",
    "images_per_second",
];

/// Everything that decides what a run computes: compared on `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub model: ViTConfig,
    pub dataset: String,
    pub data_dir: PathBuf,
    pub epochs: usize,
    pub batch_size: i64,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: usize,
    pub label_smoothing: f64,
    pub clip_grad: f64,
    pub seed: u64,
    pub train_subset: Option<i64>,
    pub recipe: crate::cli::Recipe,
    pub precision: Precision,
}

/// Where the loop is, saved in resume.safetensors's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// Epochs fully finished (rows in metrics.csv).
    epochs_done: usize,
    /// Steps taken in the current, unfinished epoch.
    step_in_epoch: usize,
    best_accuracy: f64,
    /// Sums for the unfinished epoch's train_loss / train_acc, and its training time.
    loss_sum: f64,
    correct: i64,
    seen: i64,
    seconds: f64,
}

/// One epoch's metrics.csv row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub epoch_seconds: f64,
    pub images_per_second: f64,
}

/// The loss the model is trained on: cross-entropy with label smoothing.
pub fn training_loss(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, label_smoothing)
}

/// What a single optimisation step needs besides the model, the batch and the lr.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions {
    pub label_smoothing: f64,
    /// Global gradient-norm limit (0 = off).
    pub clip_grad: f64,
    pub precision: Precision,
}

/// What one step leaves on the device (nothing here waits for the GPU).
pub struct StepOutput {
    /// The batch's mean training loss.
    pub loss: Tensor,
    /// How many of the batch's predictions were right (int64 scalar).
    pub correct: Tensor,
    /// The global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<Tensor>,
}

/// One optimisation step on a prepared batch: forward in training mode, label-smoothed
/// cross-entropy, backward, gradient clipping, AdamW.
pub fn train_step(
    model: &VisionTransformer,
    optimizer: &mut AdamW,
    images: &Tensor,
    labels: &Tensor,
    lr: f64,
    options: StepOptions,
) -> StepOutput {
    optimizer.zero_grad();
    let logits = autocast(options.precision, || model.forward_t(images, true)).to_kind(Kind::Float);
    let loss = training_loss(&logits, labels, options.label_smoothing);
    loss.backward();
    let grad_norm = (options.clip_grad > 0.0)
        .then(|| clip_grad_norm(optimizer.parameters(), options.clip_grad));
    optimizer.step(lr);
    let correct = logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Int64);
    StepOutput {
        loss: loss.detach(),
        correct,
        grad_norm,
    }
}

/// Runs `f` under bf16 autocast when asked (CUDA only: callers refuse bf16 on the CPU).
pub fn autocast<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    if precision == Precision::Fp32 {
        return f();
    }
    // tch enables CUDA autocast with libtorch's default dtype, float16, and exposes no
    // setter; this libtorch C++ function (exported by libtorch_cpu) selects bfloat16.
    extern "C" {
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        fn set_autocast_dtype(device_type: i8, dtype: i8);
    }
    const DEVICE_TYPE_CUDA: i8 = 1;
    const SCALAR_TYPE_BFLOAT16: i8 = 15;
    // SAFETY: a plain setter of thread-local autocast state taking two int8 enums.
    unsafe { set_autocast_dtype(DEVICE_TYPE_CUDA, SCALAR_TYPE_BFLOAT16) };
    tch::autocast(true, f)
}

/// `vit train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let device = args.device.resolve()?;
    ensure!(
        args.precision == Precision::Fp32 || device.is_cuda(),
        "--precision bf16 needs a CUDA device; use --precision fp32 on the CPU"
    );
    let out = args.out.clone().unwrap_or_else(default_run_dir);
    if args.resume {
        ensure!(
            args.out.is_some(),
            "--resume needs --out RUN_DIR: the run folder to continue"
        );
    }
    let mut config = args.model.resolve()?;
    let dataset = data::load(&args.data, config.image_size)?;
    let num_classes = dataset.classes.len() as i64;
    match args.model.num_classes {
        None => config.num_classes = num_classes,
        Some(n) => ensure!(
            n == num_classes,
            "--num-classes {n} does not match {} which has {num_classes} classes",
            dataset.name
        ),
    }
    let settings = TrainSettings {
        model: config,
        dataset: dataset.name.clone(),
        data_dir: args.data.data_dir.clone(),
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        warmup_epochs: args.warmup_epochs,
        label_smoothing: args.label_smoothing,
        clip_grad: args.clip_grad,
        seed: args.seed,
        train_subset: args.train_subset,
        recipe: args.recipe,
        precision: args.precision,
    };
    ensure!(args.batch_size > 0, "--batch-size must be positive");
    ensure!(args.epochs > 0, "--epochs must be positive");
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let options = RunOptions {
        out: &out,
        resume: args.resume,
        device,
        plot: args.plot,
        interrupted: &interrupted,
    };
    let outcome = train(&settings, &dataset, &options)?;
    if let Outcome::Interrupted { epoch, step } = outcome {
        eprintln!(
            "Interrupted in epoch {epoch} after step {step}; the state is saved.\n\
             Resume with: vit train --out {} --resume (and the same flags as before)",
            out.display()
        );
        std::process::exit(130);
    }
    Ok(())
}

pub enum Outcome {
    Finished { best_accuracy: f64 },
    Interrupted { epoch: usize, step: usize },
}

/// How and where a run executes; none of it changes what the run computes.
pub struct RunOptions<'a> {
    /// The run folder.
    pub out: &'a Path,
    /// Continue the run in `out` instead of starting one.
    pub resume: bool,
    pub device: Device,
    /// Refresh curves.png in the run folder after every epoch.
    pub plot: bool,
    /// Set by Ctrl-C: stop after the current step, saving the resume state.
    pub interrupted: &'a AtomicBool,
}

/// The training loop proper, on a loaded dataset, writing into `options.out`.
pub fn train(settings: &TrainSettings, dataset: &Dataset, options: &RunOptions) -> Result<Outcome> {
    let RunOptions {
        out,
        resume,
        device,
        interrupted,
        ..
    } = *options;
    let run = RunFolder::open(out, settings, resume, device)?;
    let config = &settings.model;
    let vs = nn::VarStore::new(device);
    tch::manual_seed(settings.seed as i64);
    let model = VisionTransformer::new(&vs.root(), config)?;
    let mut optimizer = AdamW::new(&vs, settings.weight_decay);
    let mut progress = Progress::default();
    if resume {
        progress = run.load_resume(&vs, &mut optimizer)?;
    }

    let train_split = match settings.train_subset {
        Some(n) => {
            ensure!(
                n > 0 && n <= dataset.train.len(),
                "--train-subset {n} is outside 1..={} (the training images there are)",
                dataset.train.len()
            );
            dataset.train.subset(n).to_device(device)
        }
        None => dataset.train.to_device(device),
    };
    let test_split = dataset.test.to_device(device);
    let n_train = train_split.len();
    ensure!(n_train > 0, "the training split is empty");
    let steps_per_epoch = ((n_train + settings.batch_size - 1) / settings.batch_size) as usize;
    let total_steps = steps_per_epoch * settings.epochs;
    let warmup_steps = steps_per_epoch * settings.warmup_epochs;
    let metadata = checkpoint_metadata(dataset);
    let console = Console::new(steps_per_epoch);
    let step_options = StepOptions {
        label_smoothing: settings.label_smoothing,
        clip_grad: settings.clip_grad,
        precision: settings.precision,
    };

    for epoch in progress.epochs_done..settings.epochs {
        let started = Instant::now();
        // Every random draw derives from (seed, epoch, step), so a resumed run replays the
        // same shuffles, augmentations and dropout masks without saving generator state.
        tch::manual_seed(mix_seed(settings.seed, epoch, usize::MAX));
        let order = Tensor::randperm(n_train, (Kind::Int64, device));
        let mut loss_sum = Tensor::from(progress.loss_sum).to_device(device);
        let mut correct = Tensor::from(progress.correct).to_device(device);
        let bar = console.epoch_bar(epoch + 1, settings.epochs, progress.step_in_epoch);
        let mut lr = 0.0;
        for step in progress.step_in_epoch..steps_per_epoch {
            let start = step as i64 * settings.batch_size;
            let index = order.narrow(0, start, settings.batch_size.min(n_train - start));
            tch::manual_seed(mix_seed(settings.seed, epoch, step));
            let batch = train_split.batch(&index);
            let images = transforms::train_transform(&batch.images, config.image_size);
            let labels = batch.labels;
            lr = learning_rate(
                settings.lr,
                epoch * steps_per_epoch + step,
                warmup_steps,
                total_steps,
            );
            let output = train_step(&model, &mut optimizer, &images, &labels, lr, step_options);
            loss_sum += output.loss * index.size()[0] as f64;
            correct += output.correct;
            progress.seen += index.size()[0];
            console.step(&bar, step + 1, &loss_sum, &correct, progress.seen);
            if interrupted.load(Ordering::SeqCst) && step + 1 < steps_per_epoch {
                progress.step_in_epoch = step + 1;
                progress.loss_sum = loss_sum.double_value(&[]);
                progress.correct = correct.int64_value(&[]);
                progress.seconds += started.elapsed().as_secs_f64();
                run.save_resume(&vs, &optimizer, &progress)?;
                bar.abandon();
                return Ok(Outcome::Interrupted {
                    epoch: epoch + 1,
                    step: step + 1,
                });
            }
        }
        bar.finish_and_clear();
        let train_loss = loss_sum.double_value(&[]) / progress.seen as f64;
        let train_acc = correct.int64_value(&[]) as f64 / progress.seen as f64;
        ensure_finite(train_loss, epoch + 1, &run)?;
        let train_seconds = progress.seconds + started.elapsed().as_secs_f64();
        let evaluation = evaluate(&model, &test_split, settings.batch_size.max(256));
        let seconds = progress.seconds + started.elapsed().as_secs_f64();
        let row = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss,
            train_acc,
            test_loss: evaluation.loss,
            test_acc: evaluation.accuracy,
            epoch_seconds: seconds,
            images_per_second: progress.seen as f64 / train_seconds,
        };
        run.append_metrics(&row)?;
        if options.plot {
            crate::plot::curves(&[out], &run.path("curves.png"))?;
        }
        checkpoint::save(&vs, config, &metadata, &run.path("last_model.safetensors"))?;
        if evaluation.accuracy > progress.best_accuracy {
            progress.best_accuracy = evaluation.accuracy;
            checkpoint::save(&vs, config, &metadata, &run.path("best_model.safetensors"))?;
        }
        progress = Progress {
            epochs_done: epoch + 1,
            best_accuracy: progress.best_accuracy,
            ..Progress::default()
        };
        run.save_resume(&vs, &optimizer, &progress)?;
        console.epoch_done(&row);
        if interrupted.load(Ordering::SeqCst) && epoch + 1 < settings.epochs {
            return Ok(Outcome::Interrupted {
                epoch: epoch + 1,
                step: steps_per_epoch,
            });
        }
    }
    Ok(Outcome::Finished {
        best_accuracy: progress.best_accuracy,
    })
}

/// A seed for (run seed, epoch, step) that never repeats across steps of a run.
fn mix_seed(seed: u64, epoch: usize, step: usize) -> i64 {
    let mut x =
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).rotate_left(32);
    // splitmix64 finaliser: nearby inputs give unrelated seeds.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x ^ (x >> 31)) >> 1) as i64
}

fn ensure_finite(train_loss: f64, epoch: usize, run: &RunFolder) -> Result<()> {
    if !train_loss.is_finite() {
        bail!(
            "the training loss became {train_loss} in epoch {epoch}; stopped. The last good \
             weights are in {} (try a lower --lr or a --clip-grad)",
            run.path("last_model.safetensors").display()
        );
    }
    Ok(())
}

/// Metadata that makes a checkpoint self-describing for `vit eval` and `vit predict`.
fn checkpoint_metadata(dataset: &Dataset) -> Vec<(&'static str, String)> {
    vec![
        ("dataset", dataset.name.clone()),
        (
            "classes",
            serde_json::to_string(&dataset.classes).expect("strings serialise"),
        ),
        (
            "mean",
            serde_json::to_string(&data::CIFAR_MEAN).expect("floats serialise"),
        ),
        (
            "std",
            serde_json::to_string(&data::CIFAR_STD).expect("floats serialise"),
        ),
    ]
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    PathBuf::from("runs").join(utc_timestamp(secs))
}

/// `YYYYMMDD-HHMMSS` in UTC (civil-from-days, Howard Hinnant's algorithm).
fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The run folder: config.json, metrics.csv, checkpoints and the resume state.
struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// Creates (or, for `resume`, reopens) the folder. A fresh run refuses a folder that
    /// already holds a run, so nothing a user had is overwritten.
    fn open(dir: &Path, settings: &TrainSettings, resume: bool, device: Device) -> Result<Self> {
        let run = Self {
            dir: dir.to_path_buf(),
        };
        let config_path = run.path("config.json");
        if resume {
            let saved = std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot resume: {} has no config.json", dir.display()))?;
            let saved: RunConfig = serde_json::from_str(&saved)
                .with_context(|| format!("{} is not a vit run config", config_path.display()))?;
            if saved.settings != *settings {
                bail!(
                    "cannot resume {}: the settings differ from the saved run.\n  saved: {}\n  given: {}\n\
                     Resume with the same flags, or start a new run with another --out",
                    dir.display(),
                    serde_json::to_string(&saved.settings)?,
                    serde_json::to_string(settings)?
                );
            }
            return Ok(run);
        }
        if config_path.exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the run folder {} (is it writable?)",
                dir.display()
            )
        })?;
        let record = RunConfig {
            settings: settings.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: format!("{device:?}"),
        };
        write_atomic(
            &config_path,
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )
        .with_context(|| format!("the run folder {} is not writable", dir.display()))?;
        let mut writer = csv::Writer::from_path(run.path("metrics.csv"))?;
        writer.write_record(METRICS_HEADER)?;
        writer.flush()?;
        Ok(run)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Appends one row and flushes, so a crash never loses a finished epoch.
    fn append_metrics(&self, row: &EpochMetrics) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path("metrics.csv"))?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        writer.serialize(row)?;
        writer.flush()?;
        Ok(())
    }

    fn save_resume(&self, vs: &nn::VarStore, optimizer: &AdamW, progress: &Progress) -> Result<()> {
        let mut tensors = optimizer.state_tensors();
        for (name, tensor) in vs.variables() {
            tensors.insert(format!("model.{name}"), tensor);
        }
        let metadata = [
            ("progress".to_string(), serde_json::to_string(progress)?),
            ("optimizer_step".to_string(), optimizer.step.to_string()),
        ]
        .into();
        TensorFile { tensors, metadata }.write(&self.path("resume.safetensors"))
    }

    fn load_resume(&self, vs: &nn::VarStore, optimizer: &mut AdamW) -> Result<Progress> {
        let path = self.path("resume.safetensors");
        ensure!(
            path.exists(),
            "cannot resume: {} is missing",
            path.display()
        );
        let file = TensorFile::read(&path)?;
        let model = TensorFile {
            tensors: file
                .tensors
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix("model.")
                        .map(|k| (k.to_string(), t.shallow_clone()))
                })
                .collect(),
            metadata: Default::default(),
        };
        model.load_into(vs)?;
        optimizer.load_state_tensors(&file.tensors)?;
        let field = |key: &str| {
            file.metadata
                .get(key)
                .with_context(|| format!("{} has no `{key}`", path.display()))
        };
        optimizer.step = field("optimizer_step")?.parse()?;
        let progress: Progress = serde_json::from_str(field("progress")?)?;
        // Rows written after the saved state (a crash between the two writes) are dropped.
        self.truncate_metrics(progress.epochs_done)?;
        Ok(progress)
    }

    fn truncate_metrics(&self, epochs: usize) -> Result<()> {
        let path = self.path("metrics.csv");
        let text = std::fs::read_to_string(&path)?;
        let kept: Vec<&str> = text.lines().take(epochs + 1).collect();
        write_atomic(&path, format!("{}\n", kept.join("\n")).as_bytes())
    }
}

/// config.json: the settings plus what produced them.
#[derive(Serialize, Deserialize)]
struct RunConfig {
    settings: TrainSettings,
    version: String,
    device: String,
}

/// A progress bar on a terminal, plain lines otherwise (CI logs, pipes).
struct Console {
    steps_per_epoch: usize,
    terminal: bool,
}

impl Console {
    /// Running loss/accuracy are read from the device only this often, to keep the
    /// training steps free of synchronisation.
    const REFRESH_EVERY: usize = 20;

    fn new(steps_per_epoch: usize) -> Self {
        Self {
            steps_per_epoch,
            terminal: std::io::stdout().is_terminal(),
        }
    }

    fn epoch_bar(&self, epoch: usize, epochs: usize, position: usize) -> indicatif::ProgressBar {
        if !self.terminal {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(self.steps_per_epoch as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        bar.set_position(position as u64);
        bar
    }

    fn step(
        &self,
        bar: &indicatif::ProgressBar,
        step: usize,
        loss_sum: &Tensor,
        correct: &Tensor,
        seen: i64,
    ) {
        bar.set_position(step as u64);
        if self.terminal
            && (step.is_multiple_of(Self::REFRESH_EVERY) || step == self.steps_per_epoch)
        {
            let per_sec = bar.per_sec() * seen as f64 / step.max(1) as f64;
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% {:.0} img/s",
                loss_sum.double_value(&[]) / seen as f64,
                100.0 * correct.int64_value(&[]) as f64 / seen as f64,
                per_sec
            ));
        }
    }

    fn epoch_done(&self, row: &EpochMetrics) {
        println!(
            "Epoch: {}, Validation Accuracy: {:.2}%  (train loss {:.4}, train acc {:.2}%, \
             test loss {:.4}, lr {:.2e}, {:.1}s, {:.0} img/s)",
            row.epoch,
            100.0 * row.test_acc,
            row.train_loss,
            100.0 * row.train_acc,
            row.test_loss,
            row.lr,
            row.epoch_seconds,
            row.images_per_second
        );
    }
}
