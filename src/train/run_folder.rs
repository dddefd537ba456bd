//! The run folder: config.json, metrics.csv (one row per epoch, flushed), the checkpoints,
//! and resume.safetensors with everything else `--resume` needs.

use super::ema::Ema;
use super::TrainSettings;
use crate::checkpoint::TensorFile;
use crate::fsutil::{remove_stale_temporaries, write_atomic, BackgroundWrites};
use crate::optim::AdamW;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

pub const METRICS_HEADER: [&str; 10] = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epoch_seconds",
    "images_per_second",
    "ema_test_loss",
    "ema_test_acc",
];

/// Where the loop is, saved in resume.safetensors's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    /// Epochs fully finished (rows in metrics.csv).
    pub(super) epochs_done: usize,
    /// Steps taken in the current, unfinished epoch.
    pub(super) step_in_epoch: usize,
    pub(super) best_accuracy: f64,
    pub(super) best_ema_accuracy: f64,
    /// Sums for the unfinished epoch's train_loss / train_acc, and its training time.
    pub(super) loss_sum: f64,
    pub(super) correct: i64,
    pub(super) seen: i64,
    pub(super) seconds: f64,
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
    /// The weights' moving average on the test set (empty without `--ema`).
    pub ema_test_loss: Option<f64>,
    pub ema_test_acc: Option<f64>,
}

pub(super) fn default_run_dir() -> PathBuf {
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
pub(super) struct RunFolder {
    dir: PathBuf,
    /// Checkpoints and resume states on their way to disk.
    writes: BackgroundWrites,
}

impl RunFolder {
    /// Creates (or, for `resume`, reopens) the folder. A fresh run refuses a folder that
    /// already holds a run's results, so nothing a user had is overwritten.
    pub(super) fn open(
        dir: &Path,
        settings: &TrainSettings,
        resume: bool,
        device: Device,
    ) -> Result<Self> {
        let run = Self {
            dir: dir.to_path_buf(),
            writes: BackgroundWrites::default(),
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
            let device = format!("{device:?}");
            if saved.device != device {
                // Allowed (a run may move to a GPU or off one), but kernels differ between
                // devices, so the continuation is not the run it would have been.
                eprintln!(
                    "note: {} was trained on {} and resumes on {device}: it continues, but \
                     replays exactly only on the device it started on",
                    dir.display(),
                    saved.device
                );
            }
            remove_stale_temporaries(dir);
            return Ok(run);
        }
        if config_path.exists() {
            ensure!(
                !run.holds_results(),
                "{} already holds a run; pass --resume to continue it or choose another --out",
                dir.display()
            );
            // A run that failed before its first epoch or save (say, out of memory): there
            // is nothing to lose, and its settings need not be repeated to start again.
            eprintln!(
                "note: {} holds a run that stopped before saving anything; starting it over",
                dir.display()
            );
            remove_stale_temporaries(dir);
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

    /// Whether the folder holds anything a run produced: a metrics row or a saved state.
    fn holds_results(&self) -> bool {
        let has_rows = std::fs::read_to_string(self.path("metrics.csv"))
            .is_ok_and(|text| text.lines().count() > 1);
        has_rows
            || [
                "resume.safetensors",
                "last_model.safetensors",
                "best_model.safetensors",
            ]
            .iter()
            .any(|name| self.path(name).exists())
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Appends one row and flushes, so a crash never loses a finished epoch.
    pub(super) fn append_metrics(&self, row: &EpochMetrics) -> Result<()> {
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

    /// Starts writing `files` (name in the folder, contents) in the background, after
    /// the files saved before, in order; a write error shows on the next call, on
    /// `check_saving` or on `finish_saving`.
    pub(super) fn save(&mut self, files: Vec<(&str, Vec<u8>)>) -> Result<()> {
        let files = files
            .into_iter()
            .map(|(name, bytes)| (self.path(name), bytes))
            .collect();
        self.writes.start(files)
    }

    /// Waits until everything saved is on disk.
    pub(super) fn finish_saving(&mut self) -> Result<()> {
        self.writes.finish()
    }

    /// A save that has already failed, without waiting (see `BackgroundWrites::check`).
    pub(super) fn check_saving(&mut self) -> Result<()> {
        self.writes.check()
    }

    /// resume.safetensors: the model, optimizer and EMA state, and `progress`.
    pub(super) fn resume_state(
        vs: &nn::VarStore,
        optimizer: &AdamW,
        ema: Option<&Ema>,
        progress: &Progress,
    ) -> Result<Vec<u8>> {
        let mut tensors = optimizer.state_tensors();
        let mut add = |prefix: &str, vs: &nn::VarStore| {
            for (name, tensor) in vs.variables() {
                tensors.insert(format!("{prefix}.{name}"), tensor);
            }
        };
        add("model", vs);
        if let Some(ema) = ema {
            add("ema", &ema.vs);
        }
        let metadata = [
            ("progress".to_string(), serde_json::to_string(progress)?),
            (
                "optimizer_step".to_string(),
                optimizer.steps_taken().to_string(),
            ),
        ]
        .into();
        TensorFile { tensors, metadata }.to_bytes()
    }

    pub(super) fn load_resume(
        &self,
        vs: &nn::VarStore,
        optimizer: &mut AdamW,
        ema: Option<&Ema>,
    ) -> Result<Progress> {
        let path = self.path("resume.safetensors");
        if !path.exists() {
            // Stopped before its first state was saved: the run starts over.
            self.truncate_metrics(0)?;
            return Ok(Progress::default());
        }
        let file = TensorFile::read(&path)?;
        file.with_prefix("model").load_into(vs)?;
        if let Some(ema) = ema {
            file.with_prefix("ema").load_into(&ema.vs)?;
        }
        let field = |key: &str| {
            file.metadata
                .get(key)
                .with_context(|| format!("{} has no `{key}`", path.display()))
        };
        optimizer.load_state(&file.tensors, field("optimizer_step")?.parse()?)?;
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
