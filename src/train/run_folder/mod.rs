//! The run folder: config.json, metrics.csv (one row per epoch, flushed), the checkpoints,
//! and resume.safetensors with everything else `--resume` needs. Apart: whether a folder
//! may take a run (`checks`), its `.lock` (`lock`), and metrics.csv's rows (`metrics`).

mod checks;
mod lock;
mod metrics;

use super::command::StartCommand;
use super::ema::Ema;
use super::{is_new_best, RunOptions, TrainSettings};
use crate::checkpoint::{TensorFile, PROGRESS_KEY};
use crate::cli::device_name;
use crate::data::DataIdentity;
use crate::fsutil::{
    append_whole, create_folder, ensure_can_write_in, ensure_out_is_a_folder,
    remove_stale_temporaries, unwritable, write_atomic, BackgroundWrites, Remedy,
};
use crate::listing::noun_for;
use crate::optim::AdamW;
use anyhow::{bail, ensure, Context, Result};
pub(super) use checks::{check_curves_replaceable, check_resumed_dataset};
use checks::{
    check_fresh, check_same_run, differences, ensure_run_file_is_a_file, holds_results,
    note_another_machine, saved_config, saved_results,
};
use lock::{ensure_folder_locked, resume_lock, RunLock, LOCK_FILE};
use metrics::{epoch_rows, header_line_end, metrics_records, metrics_rows, MetricsText};
pub(crate) use metrics::{line_at, metrics_header, EpochMetrics};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// Where the loop is, saved in resume.safetensors's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    /// Epochs fully finished (rows in metrics.csv).
    pub(super) epochs_done: usize,
    /// Steps taken in the current, unfinished epoch.
    pub(super) step_in_epoch: usize,
    /// The test accuracy of best_model.safetensors, and its epoch (1-based; 0 in a state
    /// saved before vit recorded it).
    pub(super) best_accuracy: f64,
    #[serde(default)]
    pub(super) best_epoch: usize,
    /// The same of best_ema_model.safetensors (with `--ema`).
    pub(super) best_ema_accuracy: f64,
    #[serde(default)]
    pub(super) best_ema_epoch: usize,
    /// Sums for the unfinished epoch's train_loss / train_acc, and its training time.
    pub(super) loss_sum: f64,
    pub(super) correct: i64,
    pub(super) seen: i64,
    pub(super) seconds: f64,
}

impl Progress {
    /// The best test accuracy so far and its epoch (1-based), of the model or, with `ema`,
    /// of its moving average.
    pub(super) fn best(&self, ema: bool) -> (f64, usize) {
        match ema {
            false => (self.best_accuracy, self.best_epoch),
            true => (self.best_ema_accuracy, self.best_ema_epoch),
        }
    }

    /// Takes epoch `epoch`'s (0-based) test `accuracy`, of the model or, with `ema`, of its
    /// moving average, as the best where the notebook's rule says it is ([`is_new_best`]),
    /// and says whether it did.
    pub(super) fn record_best(&mut self, ema: bool, accuracy: f64, epoch: usize) -> bool {
        if !is_new_best(accuracy, self.best(ema).0, epoch) {
            return false;
        }
        let best = (accuracy, epoch + 1);
        match ema {
            false => (self.best_accuracy, self.best_epoch) = best,
            true => (self.best_ema_accuracy, self.best_ema_epoch) = best,
        }
        true
    }

    /// Where the loop is once `epochs_done` epochs have finished: the best models kept,
    /// nothing of the next epoch done yet.
    pub(super) fn after_epochs(&self, epochs_done: usize) -> Self {
        Self {
            epochs_done,
            best_accuracy: self.best_accuracy,
            best_epoch: self.best_epoch,
            best_ema_accuracy: self.best_ema_accuracy,
            best_ema_epoch: self.best_ema_epoch,
            ..Self::default()
        }
    }
}

/// `runs/<UTC timestamp>`: a name to start from (see `RunFolder::open`).
pub(super) fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    PathBuf::from("runs").join(utc_timestamp(secs))
}

/// Creates the first of `base`, `base-2`, `base-3`, ... that does not exist yet. Each
/// creation either makes the folder or finds it there, so runs started in the same
/// second get a folder each.
fn create_numbered_folder(base: &Path) -> Result<PathBuf> {
    create_folder(crate::fsutil::folder_of(base))?;
    let mut number = 1;
    loop {
        let mut dir = base.as_os_str().to_owned();
        if number > 1 {
            dir.push(format!("-{number}"));
        }
        let dir = PathBuf::from(dir);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => number += 1,
            Err(e) => {
                let failed = format!("cannot create {}", dir.display());
                return Err(unwritable(e, failed, Remedy::AnotherFolder));
            }
        }
    }
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

/// The run's settings, dataset and starting command.
pub(crate) const CONFIG_JSON: &str = "config.json";
/// A row per finished epoch.
pub(crate) const METRICS_CSV: &str = "metrics.csv";
/// Everything else a run needs to continue where it stopped.
pub(crate) const RESUME_STATE: &str = "resume.safetensors";
/// With `--plot`, the curves (and the same as SVG beside them).
pub(crate) const CURVES_PNG: &str = "curves.png";
const CURVES_SVG: &str = "curves.svg";

/// A model's checkpoints in the run folder: of its best epoch so far, and of its last.
pub(crate) struct ModelFiles {
    pub(crate) best: &'static str,
    pub(crate) last: &'static str,
}

impl ModelFiles {
    /// The model's checkpoints, or with `ema` its moving average's.
    pub(crate) fn of(ema: bool) -> &'static Self {
        match ema {
            false => &MODEL_FILES,
            true => &EMA_MODEL_FILES,
        }
    }
}

/// The models a run keeps, as `ema` flags: the trained weights (`false`), and with
/// `with_ema` their moving average (`true`).
pub(super) fn kept_models(with_ema: bool) -> impl Iterator<Item = bool> {
    [false].into_iter().chain(with_ema.then_some(true))
}

/// The trained weights' checkpoints.
pub(crate) const MODEL_FILES: ModelFiles = ModelFiles {
    best: "best_model.safetensors",
    last: "last_model.safetensors",
};

/// With `--ema`, the checkpoints of the weights' moving average.
pub(crate) const EMA_MODEL_FILES: ModelFiles = ModelFiles {
    best: "best_ema_model.safetensors",
    last: "last_ema_model.safetensors",
};

/// What a run writes into its folder: a fresh run refuses a folder holding any of them
/// (unless they are a vit run's that saved nothing yet), so nothing a user had is
/// overwritten.
const RUN_FILES: [&str; 9] = [
    CONFIG_JSON,
    METRICS_CSV,
    MODEL_FILES.best,
    MODEL_FILES.last,
    RESUME_STATE,
    EMA_MODEL_FILES.best,
    EMA_MODEL_FILES.last,
    CURVES_PNG,
    CURVES_SVG,
];

/// The run folder: config.json, metrics.csv, checkpoints and the resume state.
pub(super) struct RunFolder {
    dir: PathBuf,
    /// Reopened to resume: false for a new run, and for a resumed one that saved nothing
    /// (started over).
    resumed: bool,
    /// Checkpoints and resume states on their way to disk, each checked first to go to
    /// the folder locked (see [`Self::new`]).
    writes: BackgroundWrites,
    /// Dropped after `writes` (fields drop in order), so the folder stays locked until
    /// the last file has landed. None: a finished run on a read-only file system, which
    /// its resume only reads (see [`resume_lock`]).
    lock: Option<RunLock>,
}

impl RunFolder {
    /// Creates (or, to resume, reopens) the folder `options` names and locks it for this
    /// process. With `numbered_out`, `out` is only where a fresh run's name starts: it gets
    /// a new folder, `out` or `out-2`, `out-3`, ... (see [`create_numbered_folder`]), which
    /// [`Self::dir`] then gives; a resume is never numbered.
    pub(super) fn open(
        options: &RunOptions,
        settings: &TrainSettings,
        data: &DataIdentity,
    ) -> Result<Self> {
        let dir = options.out;
        // `vit train` made these checks before reading the data; `train` (the library's
        // entry, and the tests') may come here without them.
        ensure_out_is_a_folder(dir)?;
        let saved_nothing = options.resume && stopped_before_its_config(dir);
        if saved_nothing {
            eprintln!(
                "note: {} holds a run that stopped before saving anything (before its \
                 config.json); starting it over",
                dir.display()
            );
        }
        match options.resume && !saved_nothing {
            true => {
                let run = Self::reopen(dir, settings, data, options.device)?;
                if options.plot {
                    check_curves_replaceable(dir)?;
                }
                Ok(run)
            }
            false => Self::create(options, settings, data),
        }
    }

    /// The folder of the run to resume, checked against `settings` and `data`.
    fn reopen(
        dir: &Path,
        settings: &TrainSettings,
        data: &DataIdentity,
        device: Device,
    ) -> Result<Self> {
        let saved = saved_config(dir)?;
        // Before the settings are compared: a live run's folder is "in use" whatever
        // the flags.
        let lock = resume_lock(
            dir,
            settings.epochs,
            RunLock::take(dir, Remedy::ResumeRun(dir)),
        )?;
        check_same_run(dir, &saved, settings, data)?;
        note_another_machine(dir, &saved, device);
        if lock.is_some() {
            remove_stale_temporaries(dir, &RUN_FILES);
        }
        let mut run = Self::new(dir.to_path_buf(), lock);
        run.resumed = true;
        Ok(run)
    }

    /// A new run's folder: `out` (or, `numbered_out`, the first free of `out`, `out-2`,
    /// ...), refused when it holds what the run would overwrite.
    fn create(options: &RunOptions, settings: &TrainSettings, data: &DataIdentity) -> Result<Self> {
        let dir = match options.numbered_out {
            true => create_numbered_folder(options.out)?,
            false => options.out.to_path_buf(),
        };
        // A vit run's folder is locked before it is checked, so that a live run's is "in
        // use"; any other folder is checked before the lock file is made, so that a refused
        // one is left as it was, and again once locked: a run that started there since may
        // have saved its files, and ended, before this one took the lock.
        let vit_run = dir.join(LOCK_FILE).exists();
        match (vit_run, dir.is_dir()) {
            (true, _) => {}
            (false, true) => check_fresh(&dir)?,
            (false, false) => create_folder(&dir)?,
        }
        let lock = RunLock::take(&dir, Remedy::AnotherFolder)?;
        check_fresh(&dir)?;
        remove_stale_temporaries(&dir, &RUN_FILES);
        let run = Self::new(dir, Some(lock));
        let record = RunConfig {
            settings: settings.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: device_name(options.device),
            cpu_threads: Some(tch::get_num_threads()),
            data: Some(data.clone()),
            command: options.command.and_then(StartCommand::new),
        };
        run.start(&record)?;
        Ok(run)
    }

    /// A fresh run in its locked folder: config.json (`record`) and the metrics header.
    fn start(&self, record: &RunConfig) -> Result<()> {
        let config = serde_json::to_string_pretty(record)?;
        self.write_first_file(CONFIG_JSON, config.as_bytes(), Remedy::AnotherFolder)?;
        self.start_metrics(Remedy::AnotherFolder)
    }

    /// metrics.csv with its header alone, as a run starts it; `remedy` for a folder that
    /// does not take it.
    fn start_metrics(&self, remedy: Remedy) -> Result<()> {
        // Atomically: `vit plot` on a live run never finds metrics.csv without its header.
        let mut header = csv::Writer::from_writer(Vec::new());
        header.write_record(metrics_header())?;
        let header = header.into_inner().map_err(|e| e.into_error())?;
        self.write_first_file(METRICS_CSV, &header, remedy)
    }

    /// Writes `name`, a file a run starts with (see [`Self::write_failed`]).
    fn write_first_file(&self, name: &str, contents: &[u8], remedy: Remedy) -> Result<()> {
        write_atomic(&self.path(name), contents).map_err(|e| self.write_failed(e, remedy))
    }

    /// `error`, from a write into the folder, naming the folder and why it took no file
    /// (a full disk, say), then what to do, as `remedy` says.
    fn write_failed(&self, error: anyhow::Error, remedy: Remedy) -> anyhow::Error {
        run_folder_unwritable(&self.dir, error, remedy)
    }

    /// `error`, from a write of the run as it trains: its folder removed or replaced
    /// (which explains a file with nowhere to go, and is the error of the check before a
    /// write), or else as [`Self::write_failed`] says, the run to be resumed from the state
    /// its folder keeps once the folder takes files again.
    fn saving_failed(&self, error: anyhow::Error) -> anyhow::Error {
        match self.ensure_still_locked() {
            Err(replaced) => replaced,
            Ok(()) => self.write_failed(error, Remedy::ResumeRun(&self.dir)),
        }
    }

    /// The run folder `dir`, locked by `lock` (None: opened only to read, see
    /// [`resume_lock`]). Its background writes check before each file that the folder is
    /// still the one locked, as the metrics row does.
    fn new(dir: PathBuf, lock: Option<RunLock>) -> Self {
        let (folder, place) = (dir.clone(), lock.as_ref().map(|lock| lock.place));
        Self {
            dir,
            resumed: false,
            writes: BackgroundWrites::checked_by(move || {
                ensure_folder_locked(&folder, place.as_ref())
            }),
            lock,
        }
    }

    /// Fails, saying what happened, unless the folder is still the one this run locked:
    /// the run writes nothing into a folder that replaced it (see [`lock::LockPlace`]).
    fn ensure_still_locked(&self) -> Result<()> {
        ensure_folder_locked(&self.dir, self.lock.as_ref().map(|lock| &lock.place))
    }

    /// The folder.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the run goes on from the state saved here (`--resume`), rather than from
    /// its first epoch.
    pub(super) fn resumed(&self) -> bool {
        self.resumed
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether the folder holds what the run saved, on disk now: a fresh run there would
    /// be refused.
    pub(super) fn holds_results(&self) -> bool {
        holds_results(&self.dir)
    }

    /// Appends one row and syncs it to the disk before the epoch's resume state is written,
    /// so that no crash (a power loss included) keeps the state but loses its row.
    /// A write that fails (a full disk) leaves no part of the row, so that the folder
    /// stays resumable. First the files saved before must have landed: a row is never
    /// more than one epoch ahead of the state, which a resume without a state (its first
    /// one lost) counts on.
    pub(super) fn append_metrics(&mut self, row: &EpochMetrics) -> Result<()> {
        self.finish_saving()?;
        self.ensure_still_locked()?;
        let path = self.path(METRICS_CSV);
        let mut line = csv::WriterBuilder::new()
            .has_headers(false)
            .terminator(header_line_end(&path))
            .from_writer(Vec::new());
        line.serialize(row)?;
        let line = line.into_inner().map_err(|e| e.into_error())?;
        append_whole(&path, &line)
            .with_context(|| format!("cannot append to {}", path.display()))
            .map_err(|e| self.saving_failed(e))
    }

    /// Starts writing `files` (name in the folder, contents) in the background, after
    /// the files saved before, in order; a write error shows on the next call, on
    /// `check_saving` or on `finish_saving`.
    pub(super) fn save(&mut self, files: Vec<(&str, Vec<u8>)>) -> Result<()> {
        let files = files
            .into_iter()
            .map(|(name, bytes)| (self.path(name), bytes))
            .collect();
        self.writes.start(files).map_err(|e| self.saving_failed(e))
    }

    /// Waits until everything saved is on disk.
    pub(super) fn finish_saving(&mut self) -> Result<()> {
        self.writes.finish().map_err(|e| self.saving_failed(e))
    }

    /// A save that has already failed, without waiting (see `BackgroundWrites::check`).
    pub(super) fn check_saving(&mut self) -> Result<()> {
        self.writes.check().map_err(|e| self.saving_failed(e))
    }

    /// The state `resume.safetensors` holds, loaded into the model, optimizer and EMA, for
    /// a run of `settings` (a state saved with others is refused). Where epochs are left,
    /// the folder must take a file: the run writes next at the end of an epoch, and a
    /// folder that takes none is refused now, not after that epoch's training.
    pub(super) fn load_resume(
        &self,
        vs: &nn::VarStore,
        optimizer: &mut AdamW,
        ema: Option<&Ema>,
        settings: &TrainSettings,
    ) -> Result<Progress> {
        let progress = self.load_saved_state(vs, optimizer, ema, settings)?;
        if progress.epochs_done < settings.epochs {
            ensure_can_write_in(&self.dir, Remedy::ResumeRun(&self.dir))?;
        }
        Ok(progress)
    }

    /// [`Self::load_resume`], but for the check that the folder takes a file.
    fn load_saved_state(
        &self,
        vs: &nn::VarStore,
        optimizer: &mut AdamW,
        ema: Option<&Ema>,
        settings: &TrainSettings,
    ) -> Result<Progress> {
        let epochs = settings.epochs;
        // metrics.csv first: before the state is loaded, and before a note counts its rows.
        ensure_run_file_is_a_file(&self.path(METRICS_CSV))?;
        let path = self.path(RESUME_STATE);
        if !path.exists() {
            return self.resume_without_state(epochs, ema.is_some());
        }
        ensure_run_file_is_a_file(&path)?;
        // A file that cannot be opened says so; what is in it is what may be foreign.
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let progress =
            read_resume_state(&path, vs, optimizer, ema, settings).with_context(|| {
                format!(
                    "cannot resume {}: its resume.safetensors is damaged or not this run's; \
                     start a new run with another --out (this folder's checkpoints stay as \
                     they are)",
                    self.dir.display()
                )
            })?;
        self.check_best_models(&progress, ema.is_some(), epochs)?;
        // A row written after the saved state (a crash between the two writes) is dropped
        // where the run goes on; a finished run writes nothing.
        self.truncate_metrics(progress.epochs_done, progress.epochs_done < epochs)?;
        Ok(progress)
    }

    /// Where a run of `epochs` epochs (`with_ema`) without a resume state starts: over,
    /// when it stopped before its first state landed (killed before or while saving its
    /// first epoch, which it then trains again, as a resume from a later state would); at
    /// its end, when it finished and its last models are there (the state, which only an
    /// unfinished run needs, removed since). One further on lost its state, and starting
    /// over would replace what it saved.
    fn resume_without_state(&self, epochs: usize, with_ema: bool) -> Result<Progress> {
        let rows = metrics_rows(&self.dir);
        let last_models_kept =
            kept_models(with_ema).all(|ema| self.path(ModelFiles::of(ema).last).is_file());
        if rows >= epochs && last_models_kept {
            return self.finished_progress(epochs);
        }
        let results = saved_results(&self.dir, rows);
        ensure!(
            rows == 0 || (rows == 1 && epochs > 1),
            "cannot resume {}: resume.safetensors is missing, but the run has results \
             ({}) that starting over would replace; start a new run with another --out",
            self.dir.display(),
            results.join(", ")
        );
        if !results.is_empty() {
            eprintln!(
                "note: {} has results ({}) but no resume state (stopped while saving \
                 its first epoch?); training that epoch again, which replaces them",
                self.dir.display(),
                results.join(", ")
            );
        }
        if results.is_empty() && crate::fsutil::is_missing(&self.path(METRICS_CSV)) {
            // Stopped before its header landed (a full disk): it saved nothing, and starts
            // as a fresh run there would start it over.
            let remedy = Remedy::ResumeRun(&self.dir);
            return self.start_metrics(remedy).map(|()| Progress::default());
        }
        self.truncate_metrics(0, true)?;
        Ok(Progress::default())
    }

    /// The progress of a finished run of `epochs` epochs, read from its metrics.csv (its
    /// resume state gone): its best test accuracies, the model's and the EMA's, by the rule
    /// that kept its best models.
    fn finished_progress(&self, epochs: usize) -> Result<Progress> {
        let path = self.path(METRICS_CSV);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot resume: cannot read {}", path.display()))?;
        let mut progress = Progress {
            epochs_done: epochs,
            ..Progress::default()
        };
        for (epoch, row) in epoch_rows(&text).into_iter().take(epochs).enumerate() {
            for (ema, accuracy) in [(false, Some(row.test_acc)), (true, row.ema_test_acc)] {
                let Some(accuracy) = accuracy else { continue };
                progress.record_best(ema, accuracy, epoch);
            }
        }
        Ok(progress)
    }

    /// Refuses to resume a run of `epochs` epochs whose best model (or best EMA model) was
    /// moved away or deleted: only an epoch that beats it writes it again, so the finished
    /// run could end without one. A finished run trains nothing more, so it is let be.
    fn check_best_models(&self, progress: &Progress, with_ema: bool, epochs: usize) -> Result<()> {
        if progress.epochs_done == 0 || progress.epochs_done >= epochs {
            return Ok(());
        }
        for ema in kept_models(with_ema) {
            let (accuracy, _) = progress.best(ema);
            let name = ModelFiles::of(ema).best;
            ensure!(
                self.path(name).exists(),
                "cannot resume {dir}: its {name} (test accuracy {:.2}%, the best of its {} \
                 {}) is missing, and the run writes it again only for an epoch that beats \
                 it. Put it back in {dir}, or start a new run with another --out",
                100.0 * accuracy,
                progress.epochs_done,
                noun_for(progress.epochs_done, "epoch"),
                dir = self.dir.display()
            );
        }
        Ok(())
    }

    /// Refuses a metrics.csv that does not begin with the header and the rows of the first
    /// `epochs` epochs (edited, or cut short), which the resumed run would extend into one
    /// with gaps that `vit plot` cannot read. Where the run `goes_on`, the row of the next
    /// epoch after them (written before a crash) is dropped, and anything else there (a
    /// line of the user's, or rows of more epochs, which dropping would delete) is refused;
    /// a finished run's file is left as it is.
    fn truncate_metrics(&self, epochs: usize, goes_on: bool) -> Result<()> {
        let path = self.path(METRICS_CSV);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot resume: cannot read {} (bring back the run's own, or start a new \
                 run with another --out)",
                path.display()
            )
        })?;
        let MetricsText {
            header_is_vits,
            records,
            end,
        } = metrics_records(&text);
        let (finished, after) = records.split_at(epochs.min(records.len()));
        let rows: Vec<Option<usize>> = finished.iter().map(|(_, epoch)| *epoch).collect();
        self.ensure_finished_rows(epochs, header_is_vits, &rows)?;
        if !goes_on {
            return Ok(());
        }
        self.ensure_only_later_rows_after(epochs, &text, after)?;
        // A row lands at most one epoch before its state (see append_metrics): with more,
        // the state is an older one or another run's, and dropping them would lose them.
        if after.len() > 1 {
            bail!(
                "cannot resume {}: its metrics.csv holds the rows of epochs {} to {} after \
                 those of the {epochs} {} its resume.safetensors has finished, but a run's \
                 rows are never more than one epoch ahead of its state: that state is an \
                 older one, or another run's. Put back the run's own resume.safetensors, or \
                 start a new run with another --out (to go back to epoch {epochs} on \
                 purpose, move the later rows out of metrics.csv first)",
                self.dir.display(),
                epochs + 1,
                epochs + after.len(),
                noun_for(epochs, "epoch")
            );
        }
        // Cut where the first row after them starts, or a row cut short; the resumed rows
        // are appended after a line's end.
        let cut = after
            .first()
            .map_or(end, |(start, _)| start.byte() as usize);
        let mut kept = text[..cut].to_string();
        if !kept.ends_with('\n') {
            kept.push('\n');
        }
        match kept == text {
            true => Ok(()),
            false => write_atomic(&path, kept.as_bytes())
                .map_err(|e| self.write_failed(e, Remedy::ResumeRun(&self.dir))),
        }
    }

    /// Refuses a metrics.csv whose first line is not vit's header (`header_is_vits`) or
    /// whose first `rows` (their epochs, None where unreadable) are not those of epochs 1
    /// to `epochs`.
    fn ensure_finished_rows(
        &self,
        epochs: usize,
        header_is_vits: bool,
        rows: &[Option<usize>],
    ) -> Result<()> {
        let expected: Vec<Option<usize>> = (1..=epochs).map(Some).collect();
        if header_is_vits && rows == expected {
            return Ok(());
        }
        let found = if !header_is_vits {
            "its first line is not the header vit writes".to_string()
        } else {
            let epochs: Vec<String> = rows
                .iter()
                .map(|row| row.map_or("(unreadable)".into(), |epoch| epoch.to_string()))
                .collect();
            format!("its rows are for epochs [{}]", epochs.join(", "))
        };
        // An epoch's row is written before its state: the first rows alone are rows removed
        // since, or a state ahead of them, another run's.
        let first_rows_only = header_is_vits && rows.len() < epochs && expected.starts_with(rows);
        let put_back = match first_rows_only {
            true => {
                ": rows were removed from metrics.csv, or resume.safetensors is another \
                 run's. Put back the run's own files"
            }
            false => ". Put back the run's own metrics.csv",
        };
        let rows = match epochs {
            0 => "only its header".to_string(),
            1 => "its header and the row of epoch 1".to_string(),
            _ => format!("its header and the rows of epochs 1 to {epochs}"),
        };
        bail!(
            "cannot resume {}: the saved state has finished {epochs} {}, so metrics.csv \
             should hold {rows}, but {found}{put_back}, or start a new run with another --out",
            self.dir.display(),
            noun_for(epochs, "epoch")
        );
    }

    /// Refuses the records of metrics.csv (`text`) `after` the rows of the `epochs` the
    /// saved state finished where one is not the row of a later epoch: a resume drops
    /// them, and that one is not the run's to drop.
    fn ensure_only_later_rows_after(
        &self,
        epochs: usize,
        text: &str,
        after: &[(csv::Position, Option<usize>)],
    ) -> Result<()> {
        if let Some((position, _)) = after
            .iter()
            .find(|(_, epoch)| epoch.is_none_or(|epoch| epoch <= epochs))
        {
            let last_kept = match epochs {
                0 => "its header (no epoch is saved)".to_string(),
                _ => format!("the row of epoch {epochs} (the last the saved state has finished)"),
            };
            bail!(
                "cannot resume {}: line {} of its metrics.csv, after {last_kept}, is not the row of \
                 a later epoch (which a resume drops, to train that epoch again), and dropping \
                 it would delete it. Move that line out of metrics.csv, then resume",
                self.dir.display(),
                line_at(text.as_bytes(), position)
            );
        }
        Ok(())
    }
}

/// In resume.safetensors: the prefixes of the model's and the EMA's tensors (the optimizer's
/// have their own names), and the metadata keys of the optimizer's step count and of the
/// run's settings (beside [`PROGRESS_KEY`]).
const MODEL_PREFIX: &str = "model";
const EMA_PREFIX: &str = "ema";
const OPTIMIZER_STEP_KEY: &str = "optimizer_step";
const SETTINGS_KEY: &str = "settings";

/// resume.safetensors: the model, optimizer and EMA state, `progress`, and the `settings`
/// of the run, by which a resume knows a state of another run.
pub(super) fn resume_state(
    vs: &nn::VarStore,
    optimizer: &AdamW,
    ema: Option<&Ema>,
    progress: &Progress,
    settings: &TrainSettings,
) -> Result<Vec<u8>> {
    let mut tensors = optimizer.state_tensors();
    let mut add = |prefix: &str, vs: &nn::VarStore| {
        for (name, tensor) in vs.variables() {
            tensors.insert(format!("{prefix}.{name}"), tensor);
        }
    };
    add(MODEL_PREFIX, vs);
    if let Some(ema) = ema {
        add(EMA_PREFIX, &ema.vs);
    }
    let metadata = [
        (PROGRESS_KEY.to_string(), serde_json::to_string(progress)?),
        (
            OPTIMIZER_STEP_KEY.to_string(),
            optimizer.steps_taken().to_string(),
        ),
        (
            SETTINGS_KEY.to_string(),
            serde_json::to_string(&state_settings(settings))?,
        ),
    ]
    .into();
    TensorFile { tensors, metadata }.to_bytes()
}

/// The settings a resume state records: the run's, but for the data folder, which a
/// resume may move (config.json records the images themselves).
fn state_settings(settings: &TrainSettings) -> TrainSettings {
    TrainSettings {
        data_dir: PathBuf::new(),
        ..settings.clone()
    }
}

/// The state a resume.safetensors at `path` holds (as [`resume_state`] writes it), loaded
/// into the weights in `vs`, the optimizer and the EMA; its progress. A state that
/// records other `settings` than the run's is refused, naming them.
fn read_resume_state(
    path: &Path,
    vs: &nn::VarStore,
    optimizer: &mut AdamW,
    ema: Option<&Ema>,
    settings: &TrainSettings,
) -> Result<Progress> {
    let file = TensorFile::read(path)?;
    // States saved by earlier versions record no settings.
    if let Some(saved) = file.metadata.get(SETTINGS_KEY) {
        let saved: TrainSettings = serde_json::from_str(saved)
            .with_context(|| format!("cannot read the `{SETTINGS_KEY}` it records"))?;
        let given = state_settings(settings);
        ensure!(
            saved == given,
            "it was saved by a run with other settings (saved: the state's, given: this \
             run's):\n  {}",
            differences("", &saved, &given)?
        );
    }
    let not_finite = file.not_finite();
    ensure!(
        not_finite.is_empty(),
        "it has NaN or infinite values in {}",
        crate::checkpoint::first_few(&not_finite)
    );
    file.with_prefix(MODEL_PREFIX).load_into(vs)?;
    if let Some(ema) = ema {
        file.with_prefix(EMA_PREFIX).load_into(&ema.vs)?;
    }
    let field = |key: &str| {
        file.metadata
            .get(key)
            .with_context(|| format!("{} has no `{key}`", path.display()))
    };
    optimizer.load_state(&file.tensors, field(OPTIMIZER_STEP_KEY)?.parse()?)?;
    Ok(serde_json::from_str(field(PROGRESS_KEY)?)?)
}

/// Whether `dir` holds a run that was stopped (killed, or the power lost) after it locked
/// its folder but before its config.json landed: its `.lock` alone (vit's or not; the lock
/// checks that), and none of the files a run writes. It saved nothing, so `--resume`
/// starts it over, as a fresh run there would (a live run's lock refuses both).
pub(super) fn stopped_before_its_config(dir: &Path) -> bool {
    let missing = |name: &str| crate::fsutil::is_missing(&dir.join(name));
    !missing(LOCK_FILE) && RUN_FILES.into_iter().all(missing)
}

/// The settings the run in `dir` records in its config.json, where [`saved_config`] reads
/// one (a pipe is not read: its read would wait for a writer).
pub(crate) fn recorded_settings(dir: &Path) -> Option<TrainSettings> {
    saved_config(dir).ok().map(|config| config.settings)
}

/// config.json: the settings plus what produced them.
#[derive(Serialize, Deserialize)]
struct RunConfig {
    settings: TrainSettings,
    version: String,
    device: String,
    /// libtorch's CPU thread count (none in runs of earlier versions): a CPU run's sums
    /// split over another count round differently.
    #[serde(default)]
    cpu_threads: Option<i32>,
    /// The images trained on (none in runs of earlier versions, which compare the data
    /// folder instead).
    #[serde(default)]
    data: Option<DataIdentity>,
    /// The command that started the run, from which a resume refused gives the command
    /// that resumes it (none in runs of earlier versions, or where it was not text).
    #[serde(default)]
    command: Option<StartCommand>,
}

/// `error`, from a write into the run folder `dir`, naming the folder and why it took no
/// file (a full disk, say), then what to do, as `remedy` says.
fn run_folder_unwritable(
    dir: &Path,
    error: impl Into<anyhow::Error>,
    remedy: Remedy,
) -> anyhow::Error {
    let failed = format!("cannot write to the run folder {}", dir.display());
    unwritable(error, failed, remedy)
}

#[cfg(test)]
mod tests {
    use super::{
        metrics_header, metrics_rows, resume_lock, saved_results, utc_timestamp, EpochMetrics,
        Progress, RunFolder, RunLock, LOCK_FILE, METRICS_CSV, MODEL_FILES, RESUME_STATE,
    };
    use crate::fsutil::{io_error_kind, Remedy};
    use crate::temp_dir::TempDir;

    /// A locked run folder in a new temporary folder named from `name` (removed when the
    /// folder is dropped, after the run).
    fn temporary_run(name: &str) -> (TempDir, RunFolder) {
        let dir = TempDir::new(name);
        let lock = RunLock::take(&dir, Remedy::AnotherFolder).unwrap();
        let run = RunFolder::new(dir.to_path_buf(), Some(lock));
        (dir, run)
    }

    /// A run's saved results count its metrics.csv rows as epochs: "1 epoch", "2 epochs"
    /// (a folder without checkpoints, here one that does not exist, adds nothing else).
    #[test]
    fn saved_results_count_the_epochs_in_metrics_csv() {
        let dir = std::path::Path::new("/nonexistent/vit-run");
        assert!(saved_results(dir, 0).is_empty());
        assert_eq!(saved_results(dir, 1), ["1 epoch in metrics.csv"]);
        assert_eq!(saved_results(dir, 2), ["2 epochs in metrics.csv"]);
    }

    /// Run folder names against `date -u -d @SECS +%Y%m%d-%H%M%S`: leap days (2000 is a
    /// leap year, 2100 is not), the ends of months and years, January and February (which
    /// the algorithm counts in the year before).
    #[test]
    fn utc_timestamps_are_dates_command_ones() {
        for (secs, date) in [
            (0, "19700101-000000"),
            (951_782_399, "20000228-235959"),
            (951_782_400, "20000229-000000"),
            (1_709_251_199, "20240229-235959"),
            (1_709_251_200, "20240301-000000"),
            (1_735_689_599, "20241231-235959"),
            (1_738_411_200, "20250201-120000"),
            (4_107_542_400, "21000301-000000"),
            (253_402_300_799, "99991231-235959"),
        ] {
            assert_eq!(utc_timestamp(secs), date, "{secs}");
        }
    }

    /// After the rows the saved state has finished, a resume drops the row of the next
    /// epoch (a crash between the two writes), but refuses by its line one that is not a
    /// later epoch's row, an earlier epoch's row again or a line vit did not write, refuses
    /// rows of two later epochs, and leaves the file as it is; a finished run's file is
    /// left as it is too.
    #[test]
    fn rows_after_the_saved_state_are_dropped_only_for_later_epochs() {
        let (_dir, run) = temporary_run("metrics");
        let dir = run.dir().to_path_buf();
        let row = |epoch: &str| format!("{epoch},0.001,2.0,0.5,1.9,0.4,1.0,100.0,,");
        let header = metrics_header().join(",");
        let saved = format!("{header}\n{}\n", row("1"));
        let path = dir.join(METRICS_CSV);
        for (after, refused) in [
            (vec![row("2")], None),
            // More than one: the state is older than the rows (or another run's).
            (
                vec![row("2"), row("3")],
                Some("holds the rows of epochs 2 to 3 after those of the 1 epoch"),
            ),
            (
                vec![row("2"), "# a note".into()],
                Some("line 4 of its metrics.csv"),
            ),
            (vec![row("2"), row("1")], Some("line 4 of its metrics.csv")),
            (
                vec![row("2"), row("n/a")],
                Some("line 4 of its metrics.csv"),
            ),
        ] {
            let text = format!("{saved}{}\n", after.join("\n"));
            std::fs::write(&path, &text).unwrap();
            let result = run.truncate_metrics(1, true).map_err(|e| e.to_string());
            let left = std::fs::read_to_string(&path).unwrap();
            match refused {
                None => assert_eq!((result, left), (Ok(()), saved.clone())),
                Some(refused) => {
                    assert!(
                        result.as_ref().is_err_and(|e| e.contains(refused)),
                        "{result:?}"
                    );
                    assert_eq!(left, text);
                }
            }
        }
        // A finished run's file is left as it is, whatever follows its rows.
        let finished = format!("{saved}{}\n# a note", row("2"));
        std::fs::write(&path, &finished).unwrap();
        run.truncate_metrics(1, false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), finished);
        // Where the state finished no epoch, the line refused follows the header.
        std::fs::write(&path, format!("{header}\n# a note\n")).unwrap();
        let error = run.truncate_metrics(0, true).unwrap_err().to_string();
        assert!(
            error.contains("line 2 of its metrics.csv, after its header (no epoch is saved)"),
            "{error}"
        );

        // The refused line as numbered in the file, with CRLF endings or blank lines before.
        for (text, line) in [
            (
                format!("{header}\r\n{}\r\n{}\r\n# a note\r\n", row("1"), row("2")),
                4,
            ),
            (
                format!("{header}\n{}\n{}\n\n\n# a note\n", row("1"), row("2")),
                6,
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            let error = run.truncate_metrics(1, true).unwrap_err().to_string();
            assert!(
                error.contains(&format!("line {line} of")),
                "{text:?}: {error}"
            );
        }

        // Blank lines are no rows: one among the finished rows keeps the row after it, and
        // the cut is where the first later row starts. CRLF endings are kept, and a file
        // whose last line has no end gets one (the resumed rows follow it).
        for (text, kept) in [
            (
                format!("{header}\n{}\n\n{}\n{}\n", row("1"), row("2"), row("3")),
                format!("{header}\n{}\n\n{}\n", row("1"), row("2")),
            ),
            (
                format!(
                    "{header}\r\n{}\r\n{}\r\n{}\r\n",
                    row("1"),
                    row("2"),
                    row("3")
                ),
                format!("{header}\r\n{}\r\n{}\r\n", row("1"), row("2")),
            ),
            (
                format!("{header}\n{}\n{}", row("1"), row("2")),
                format!("{header}\n{}\n{}\n", row("1"), row("2")),
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            run.truncate_metrics(2, true).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), kept, "{text:?}");
        }
    }

    /// A resume that cannot lock its folder on a read-only file system goes on without the
    /// lock for a finished run alone, which writes nothing; an unfinished run, or another
    /// error, is refused with that error.
    #[test]
    fn only_a_finished_run_resumes_without_its_lock_on_a_read_only_file_system() {
        use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem, StorageFull};
        let (_dir, run) = temporary_run("read-only");
        let progress = Progress {
            epochs_done: 2,
            ..Progress::default()
        };
        let metadata = [(
            crate::checkpoint::PROGRESS_KEY.to_string(),
            serde_json::to_string(&progress).unwrap(),
        )];
        let state = crate::checkpoint::TensorFile {
            tensors: Default::default(),
            metadata: metadata.into(),
        };
        std::fs::write(run.path(RESUME_STATE), state.to_bytes().unwrap()).unwrap();
        let failed = |kind: std::io::ErrorKind| {
            Err(anyhow::Error::new(std::io::Error::from(kind)).context("cannot write"))
        };
        let finished = resume_lock(run.dir(), 2, failed(ReadOnlyFilesystem)).unwrap();
        assert!(finished.is_none());
        for (epochs, kind) in [
            (3, ReadOnlyFilesystem),
            (2, PermissionDenied),
            (2, StorageFull),
        ] {
            let refused = resume_lock(run.dir(), epochs, failed(kind)).err();
            let kind_refused = refused.as_ref().and_then(io_error_kind);
            assert_eq!(kind_refused, Some(kind), "{epochs} epochs");
        }
    }

    /// A run whose `.lock` or whole folder was removed or replaced while it trained, or
    /// whose folder was removed, writes nothing more there, neither its row nor its files
    /// in the background, and says which of these happened.
    #[test]
    fn a_run_writes_only_into_the_folder_it_locked() {
        let (_dir, mut run) = temporary_run("replaced");
        let dir = run.dir().to_path_buf();
        let header = format!("{}\n", metrics_header().join(","));
        std::fs::write(dir.join(METRICS_CSV), &header).unwrap();
        let row = EpochMetrics {
            epoch: 1,
            ..EpochMetrics::default()
        };
        run.append_metrics(&row).unwrap();
        let metrics = std::fs::read_to_string(dir.join(METRICS_CSV)).unwrap();
        let refused = |run: &mut RunFolder, said: &str, metrics: Option<&str>| {
            let error = format!("{:#}", run.append_metrics(&row).unwrap_err());
            assert!(error.contains(said), "{error}");
            run.save(vec![(MODEL_FILES.last, vec![0])]).unwrap();
            let error = format!("{:#}", run.finish_saving().unwrap_err());
            assert!(error.contains(said), "{error}");
            let now = std::fs::read_to_string(dir.join(METRICS_CSV)).ok();
            assert_eq!(now.as_deref(), metrics);
            assert!(!dir.join(MODEL_FILES.last).exists());
        };
        // Its .lock removed, and made again (by a resume, say).
        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        std::fs::write(dir.join(LOCK_FILE), "1").unwrap();
        let shown = dir.display();
        let said = format!("{shown}/.lock was removed or replaced while this run trained");
        refused(&mut run, &said, Some(&metrics));
        // The folder removed, and another run started in its place.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(LOCK_FILE), "1").unwrap();
        std::fs::write(dir.join(METRICS_CSV), &header).unwrap();
        let said = format!(
            "{shown} was removed or replaced while this run trained (another run there now?): \
             this run stops without writing"
        );
        refused(&mut run, &said, Some(&header));
        // The folder removed.
        std::fs::remove_dir_all(&dir).unwrap();
        let said = format!("{shown} was removed while this run trained");
        refused(&mut run, &said, None);
    }

    /// Rows end as the header does: LF as vit writes it, CRLF or CR where a spreadsheet
    /// saved the file so (a resume would otherwise mix the two).
    #[test]
    fn rows_end_as_the_header_does() {
        let (_dir, mut run) = temporary_run("row-ends");
        let path = run.path(METRICS_CSV);
        let header = metrics_header().join(",");
        let row = EpochMetrics {
            epoch: 1,
            ..EpochMetrics::default()
        };
        for end in ["\n", "\r\n", "\r"] {
            std::fs::write(&path, format!("{header}{end}")).unwrap();
            run.append_metrics(&row).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let row_text = text.strip_prefix(&format!("{header}{end}")).unwrap();
            assert!(row_text.starts_with("1,"), "{text:?}");
            let (cells, row_end) = row_text.split_at(row_text.len() - end.len());
            assert_eq!(row_end, end, "{text:?}");
            assert!(!cells.contains(['\r', '\n']), "{text:?}");
        }
    }

    /// A row is appended only once the files saved before it have landed: where they
    /// failed, the run stops before the row, which a resume of a run whose first state
    /// failed could not tell from a finished epoch's.
    #[test]
    fn a_row_waits_for_the_files_saved_before_it() {
        let (_dir, mut run) = temporary_run("row-waits");
        let dir = run.dir().to_path_buf();
        let header = format!("{}\n", metrics_header().join(","));
        std::fs::write(dir.join(METRICS_CSV), &header).unwrap();
        let unwritable = "no-such-folder/resume.safetensors";
        run.save(vec![(unwritable, vec![0])]).unwrap();
        let row = EpochMetrics {
            epoch: 1,
            ..EpochMetrics::default()
        };
        let error = format!("{:#}", run.append_metrics(&row).unwrap_err());
        assert!(error.contains(unwritable), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.join(METRICS_CSV)).unwrap(),
            header
        );
    }

    /// A last row that a failed write cut short (left by versions before vit cut those
    /// back) is dropped where a resume goes on, as a later epoch's row, and is not counted
    /// as an epoch; a line that only looks like one (with a line end, of another epoch, or
    /// with a value that is no number) is refused by its line, and left as it is.
    #[test]
    fn a_last_row_cut_short_is_dropped_but_no_line_that_looks_like_one() {
        let (_dir, run) = temporary_run("cut-row");
        let dir = run.dir().to_path_buf();
        let row = |epoch: &str| format!("{epoch},0.001,2.0,0.5,1.9,0.4,1.0,100.0,,");
        let saved = format!("{}\n{}\n", metrics_header().join(","), row("1"));
        let path = dir.join(METRICS_CSV);
        for cut in [
            "2".to_string(),
            "2,0.001,2.".into(),
            "2,6.88e-6,1.94,0.315,".into(),
            "2,0.001,2.0,0.5,1.9,0.4,1.0,100.0,".into(),
            format!("{}\n3,0.00", row("2")),
            format!("{}\r\n\r\n3,0.00", row("2")),
        ] {
            let text = format!("{saved}{cut}");
            std::fs::write(&path, &text).unwrap();
            let rows = 1 + cut.matches(&row("2")).count();
            assert_eq!(metrics_rows(&dir), rows, "{text:?}");
            run.truncate_metrics(1, true).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), saved, "{text:?}");
        }
        for users in [
            "2,0.001,2.\n",
            "3,0.001",
            "20,0.1",
            "1,0.001",
            "2,abc,0.5",
            "2,,0.5",
            "2,0.001,n/a",
            "# 2,0.001",
            "\"2\",0.001",
        ] {
            let text = format!("{saved}{users}");
            std::fs::write(&path, &text).unwrap();
            let error = run.truncate_metrics(1, true).unwrap_err().to_string();
            assert!(
                error.contains("line 3 of its metrics.csv"),
                "{text:?}: {error}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }
}
