//! `vit train`: the notebook's training loop, with a run folder that survives crashes.
//!
//! Each epoch: shuffle, augment on the device, AdamW steps with warm-up + cosine learning
//! rate, then the test-set "Validation Accuracy", one metrics.csv row, last_model and (on
//! improvement) best_model. `resume.safetensors` holds everything else a run needs to
//! continue exactly where it stopped, even mid-epoch.

mod command;
mod console;
mod cuda_graph;
mod ema;
mod interrupt;
mod recipe;
mod run_folder;
mod seeds;
mod settings;
mod step;

pub use cuda_graph::CudaGraphSteps;
pub use ema::ema_decay;
pub use recipe::Regularization;
#[cfg(test)] // For `vit plot`'s test that it draws the columns written.
pub(crate) use run_folder::metrics_header;
use run_folder::EpochMetrics;
pub use seeds::draw_seed;
pub use settings::TrainSettings;
pub use step::{
    forward_backward_update, train_step, training_loss, StepOptions, StepOutput, TrainBatch,
};

use crate::checkpoint;
use crate::cli::{CudaGraphScope, Precision, TrainArgs};
use crate::data::{self, Dataset, Split};
use crate::eval::evaluate;
use crate::listing::noun_for;
use crate::model::VisionTransformer;
use crate::optim::{learning_rate, AdamW};
use anyhow::{bail, ensure, Result};
use console::Console;
use ema::Ema;
use run_folder::{default_run_dir, ModelFiles, Progress, RunFolder, CURVES_PNG};
// The run folder's file names and recorded settings, for commands that read it; and how
// metrics.csv's lines are numbered, for `vit plot`'s messages.
pub(crate) use run_folder::{line_at, recorded_settings, METRICS_CSV, MODEL_FILES, RESUME_STATE};
use seeds::{epoch_order, seed_bits};
use settings::{
    epoch_steps, settings_and_dataset, training_images, warn_about_settings_without_effect,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// `vit train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    // Before libtorch starts its threads, so that they leave the signals to the handler's
    // thread (see runtime::on_interrupt); until the run is armed below, it quits at once.
    let stop = interrupt::stop_on_interrupt()?;
    let device = args.device.set_up()?;
    let out = args.out.clone().unwrap_or_else(default_run_dir);
    ensure!(
        !args.resume || args.out.is_some(),
        "--resume needs --out RUN_DIR: the run folder to continue"
    );
    // As every flag, before the data is read (a folder dataset may take a while).
    crate::fsutil::ensure_out_is_a_folder(&out)?;
    if args.cuda_graph.is_some() {
        CudaGraphSteps::check_device(device)?;
    }
    // A run killed before its config.json landed saved nothing: it starts over.
    let resumed_data_dir = match args.resume && !run_folder::stopped_before_its_config(&out) {
        true => {
            let data_dir = run_folder::check_resumed_dataset(&out, data::dataset_name(&args.data))?;
            if args.plot {
                run_folder::check_curves_replaceable(&out)?;
            }
            Some(data_dir)
        }
        false => None,
    };
    let check_memory = device == Device::Cpu;
    let (settings, dataset) =
        settings_and_dataset(args, resumed_data_dir.as_deref(), check_memory)?;
    let command: Vec<OsString> = std::env::args_os().collect();
    // A run without --out has its folder's name once the folder is made (see
    // open_run_folder).
    if args.out.is_some() {
        interrupt::note_run_folder(&command, &out);
    }
    stop.arm();
    let options = RunOptions {
        out: &out,
        numbered_out: args.out.is_none(),
        resume: args.resume,
        device,
        plot: args.plot,
        cuda_graph: args.cuda_graph,
        interrupted: &stop.requested,
        command: Some(&command),
    };
    match train(&settings, &dataset, &options)? {
        Outcome::Finished => {
            stop.finish(interrupt::say_on_stderr);
            Ok(())
        }
        Outcome::Interrupted { at, run_dir } => interrupt::quit_saved(&command, at, &run_dir),
    }
}

/// How `train` ended.
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// Ctrl-C: the state is saved, as it was `at` that point, in the run folder `run_dir`.
    Interrupted { at: StopPoint, run_dir: PathBuf },
}

/// Where in its epochs (1-based) a run stopped, or resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPoint {
    /// Before the first step of the epoch.
    StartOf(usize),
    /// After `step` steps of `epoch`, which has more.
    AfterStep { epoch: usize, step: usize },
    /// After the epoch's last step, its test pass and its metrics row.
    EndOf(usize),
}

impl std::fmt::Display for StopPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Self::StartOf(epoch) => write!(f, "at the start of epoch {epoch}"),
            Self::AfterStep { epoch, step } => write!(f, "after step {step} of epoch {epoch}"),
            Self::EndOf(epoch) => write!(f, "at the end of epoch {epoch}"),
        }
    }
}

/// How and where a run executes, as against [`TrainSettings`], what it computes. (The
/// device's kernels round differently, so a run resumed on another one notes that it
/// will not replay exactly.)
pub struct RunOptions<'a> {
    /// The run folder (with `numbered_out`, where its name starts).
    pub out: &'a Path,
    /// `out` is the default name, `runs/<timestamp>`: a fresh run creates the first of
    /// `out`, `out-2`, `out-3`, ... that does not exist, so runs started together each get
    /// their own.
    pub numbered_out: bool,
    /// Continue the run in `out` instead of starting one.
    pub resume: bool,
    pub device: Device,
    /// Refresh curves.png in the run folder after every epoch (or draw it once, for a
    /// finished run resumed).
    pub plot: bool,
    /// What a CUDA graph records; None: no graph.
    pub cuda_graph: Option<CudaGraphScope>,
    /// Set by Ctrl-C: stop after the current step, saving the resume state.
    pub interrupted: &'a AtomicBool,
    /// The command line that started the run, from which a fresh run records the command
    /// that resumes it (in config.json, for a resume refused to show); None: not recorded.
    pub command: Option<&'a [OsString]>,
}

impl RunOptions<'_> {
    /// Whether the run gets a new numbered folder, whose name is known only once made.
    fn numbers_a_new_folder(&self) -> bool {
        self.numbered_out && !self.resume
    }
}

/// The training loop proper, on a loaded dataset, writing into the run folder
/// `options` names.
pub fn train(settings: &TrainSettings, dataset: &Dataset, options: &RunOptions) -> Result<Outcome> {
    let mut trainer = Trainer::new(settings, dataset, options)?;
    // Once the run is sure to train: not before an error that stops it, nor for a finished
    // run resumed.
    let trains = trainer.progress.epochs_done < settings.epochs;
    if trains {
        trainer.say_what_it_trains(&dataset.name);
        dataset
            .train
            .note_resizing(&dataset.name, settings.model.image_size);
        warn_about_settings_without_effect(settings, trainer.train_split.len());
        crate::runtime::warn_if_bf16_is_slow(
            options.device,
            &[
                ("--precision", settings.precision),
                ("--eval-precision", settings.eval_precision),
            ],
            trainer.run.resumed(),
        );
    }
    let outcome = trainer.train_epochs()?;
    trainer.run.finish_saving()?;
    if let Outcome::Finished = outcome {
        trainer.say_best_models();
    }
    Ok(outcome)
}

/// How `Trainer::train_epoch` ended.
enum EpochEnd {
    /// Every step ran: the last step's learning rate and the epoch's running sums.
    Done { lr: f64, sums: RunningSums },
    /// Ctrl-C: the state is saved after `step` steps of the epoch.
    Interrupted { step: usize },
}

/// The epoch's summed training loss (double [], seeded from `Progress::loss_sum`) and
/// correct count (int64 []), left on the device until the epoch ends: reading them per step
/// would synchronise.
struct RunningSums {
    loss: Tensor,
    correct: Tensor,
}

/// One run: its folder, model, optimizer, EMA and data, and where it stands.
struct Trainer<'a> {
    settings: &'a TrainSettings,
    options: &'a RunOptions<'a>,
    run: RunFolder,
    vs: nn::VarStore,
    model: VisionTransformer,
    optimizer: AdamW,
    /// With `--cuda-graph`: the steps replayed as a graph.
    cuda_graph: Option<CudaGraphSteps>,
    ema: Option<Ema>,
    train_split: Split,
    test_split: Split,
    steps_per_epoch: usize,
    metadata: Vec<(&'static str, String)>,
    console: Console,
    progress: Progress,
}

/// Opens (or reopens, to resume) the run folder `options` names, saying where a fresh
/// numbered one is.
fn open_run_folder(
    settings: &TrainSettings,
    dataset: &Dataset,
    options: &RunOptions,
) -> Result<RunFolder> {
    let run = RunFolder::open(options, settings, &dataset.identity())?;
    if let Some(command) = options.command {
        interrupt::note_run_folder(command, run.dir());
    }
    if options.numbers_a_new_folder() {
        eprintln!("Run folder: {}", run.dir().display());
    }
    Ok(run)
}

/// The model of `settings` in `vs`, drawn from the run's seed, with its dropouts; its AdamW;
/// and with `--ema`, the EMA of its weights.
fn model_optimizer_and_ema(
    vs: &nn::VarStore,
    settings: &TrainSettings,
) -> Result<(VisionTransformer, AdamW, Option<Ema>)> {
    let regularization = &settings.regularization;
    tch::manual_seed(seed_bits(settings.seed) as i64);
    let mut model = VisionTransformer::new(&vs.root(), &settings.model)?;
    model.set_drop_path_rate(regularization.drop_path);
    model.set_attn_dropout(regularization.attn_dropout);
    let optimizer = AdamW::new(vs, settings.weight_decay)?;
    let ema = regularization
        .ema
        .map(|decay| Ema::new(vs, &settings.model, decay, regularization.ema_warmup))
        .transpose()?;
    Ok((model, optimizer, ema))
}

impl<'a> Trainer<'a> {
    /// Opens (or reopens, to resume) the run folder, builds the model, optimizer and EMA,
    /// and moves the data to the device.
    fn new(
        settings: &'a TrainSettings,
        dataset: &Dataset,
        options: &'a RunOptions<'a>,
    ) -> Result<Self> {
        let device = options.device;
        // Before the run folder exists, so that a refused run leaves none behind.
        let train_images = training_images(settings, dataset)?;
        let full_batch = settings.batch_size.min(train_images);
        let steps_per_epoch = epoch_steps(settings, train_images)?;
        let cuda_graph = options
            .cuda_graph
            .map(|scope| CudaGraphSteps::new(device, full_batch, scope))
            .transpose()?;
        let run = open_run_folder(settings, dataset, options)?;
        let vs = nn::VarStore::new(device);
        let (model, mut optimizer, ema) = model_optimizer_and_ema(&vs, settings)?;
        let progress = starting_progress(
            &run,
            settings,
            &vs,
            &mut optimizer,
            ema.as_ref(),
            steps_per_epoch,
        )?;
        let train_split = match settings.train_subset {
            Some(n) => dataset.train.subset(n).to_device(device),
            None => dataset.train.to_device(device),
        };
        Ok(Self {
            settings,
            options,
            run,
            vs,
            model,
            optimizer,
            cuda_graph,
            ema,
            test_split: dataset.test.to_device(device),
            train_split,
            steps_per_epoch,
            metadata: checkpoint::dataset_metadata(dataset),
            console: Console::new(steps_per_epoch),
            progress,
        })
    }

    /// A line on stderr before the first epoch: the model's size, the images of
    /// `dataset_name`, the epochs and steps, the recipe and where it all runs, so that a
    /// long run's log says what it is from the start.
    fn say_what_it_trains(&self, dataset_name: &str) {
        let parameters = crate::model::parameter_total(&self.vs);
        let settings = self.settings;
        let device = match self.options.device {
            Device::Cpu => {
                let threads = tch::get_num_threads();
                format!("cpu with {threads} {}", noun_for(threads, "thread"))
            }
            device => crate::cli::device_name(device),
        };
        let recipe = crate::cli::value_name(&settings.recipe);
        let precision = match settings.precision {
            Precision::Fp32 => "",
            Precision::Bf16 => " in bf16",
        };
        let train_images = self.train_split.len();
        let images = noun_for(train_images, "image");
        let train_images = match dataset_name == data::FOLDER {
            true => format!(
                "{train_images} training {images} of the folder dataset {}",
                settings.data_dir.display()
            ),
            false => format!("{train_images} {dataset_name} training {images}"),
        };
        eprintln!(
            "Training {parameters} parameters on {train_images} (testing on {}): {} {} of {} \
             {}, batch {}, {} recipe{precision}, on {device}",
            self.test_split.len(),
            settings.epochs,
            noun_for(settings.epochs, "epoch"),
            self.steps_per_epoch,
            noun_for(self.steps_per_epoch, "step"),
            settings.batch_size.min(self.train_split.len()),
            recipe
        );
    }

    /// The remaining epochs, or until Ctrl-C.
    fn train_epochs(&mut self) -> Result<Outcome> {
        let epochs = self.settings.epochs;
        if self.progress.epochs_done >= epochs {
            eprintln!(
                "note: {} already finished its {epochs} {}; nothing to train",
                self.run.dir().display(),
                noun_for(epochs, "epoch")
            );
            // What --plot asks for, though no epoch ends to draw them.
            self.draw_curves();
        }
        for epoch in self.progress.epochs_done..epochs {
            let started = Instant::now();
            match self.train_epoch(epoch, started)? {
                EpochEnd::Interrupted { step } => {
                    let epoch = epoch + 1;
                    return Ok(self.interrupted(StopPoint::AfterStep { epoch, step }));
                }
                EpochEnd::Done { lr, sums } => self.finish_epoch(epoch, started, lr, sums)?,
            }
            if self.options.interrupted.load(Ordering::SeqCst) && epoch + 1 < epochs {
                return Ok(self.interrupted(StopPoint::EndOf(epoch + 1)));
            }
        }
        Ok(Outcome::Finished)
    }

    /// How a run stopped by Ctrl-C `at` a point ends, its state saved in the run folder.
    fn interrupted(&self, at: StopPoint) -> Outcome {
        let run_dir = self.run.dir().to_path_buf();
        Outcome::Interrupted { at, run_dir }
    }

    /// The training steps of `epoch` (from where a resumed run stopped), stopping early
    /// with the state saved when Ctrl-C was pressed.
    fn train_epoch(&mut self, epoch: usize, started: Instant) -> Result<EpochEnd> {
        let settings = self.settings;
        let device = self.options.device;
        // A graph replays the augmentation it captured, which changes at --mix-off-epoch.
        let regularization = &settings.regularization;
        if epoch > 0 && regularization.mixes_in(epoch) != regularization.mixes_in(epoch - 1) {
            if let Some(graph) = &mut self.cuda_graph {
                graph.start_over();
            }
        }
        let augment = |inputs: &TrainBatch| {
            TrainBatch::new(
                &inputs.images,
                inputs.labels.shallow_clone(),
                &settings.model,
                regularization,
                settings.label_smoothing,
                epoch,
            )
        };
        // Every random draw derives from (seed, epoch, step), so a resumed run replays the
        // same shuffles, augmentations and dropout masks without saving generator state.
        let order = epoch_order(
            settings.seed,
            epoch,
            self.steps_per_epoch,
            self.train_split.len(),
            device,
        );
        let mut sums = RunningSums {
            loss: Tensor::from(self.progress.loss_sum).to_device(device),
            correct: Tensor::from(self.progress.correct).to_device(device),
        };
        let bar = self
            .console
            .epoch_bar(epoch + 1, settings.epochs, self.progress.step_in_epoch);
        let mut lr = 0.0;
        for step in self.progress.step_in_epoch..self.steps_per_epoch {
            lr = self.take_step(epoch, step, &order, &augment, &mut sums)?;
            let seen = self.progress.seen;
            self.console
                .step(&bar, step + 1, &sums.loss, &sums.correct, seen);
            self.run.check_saving()?;
            if self.options.interrupted.load(Ordering::SeqCst) && step + 1 < self.steps_per_epoch {
                self.save_mid_epoch(epoch, step + 1, &sums, started)?;
                bar.abandon();
                return Ok(EpochEnd::Interrupted { step: step + 1 });
            }
        }
        bar.finish_and_clear();
        Ok(EpochEnd::Done { lr, sums })
    }

    /// Step `step` (0-based) of `epoch`: the batch at that place of the epoch's shuffled
    /// `order`, augmented by `augment`, trained on (through the CUDA graph with
    /// `--cuda-graph`) and averaged into the EMA, its loss and correct count added to
    /// `sums`. Gives the step's learning rate.
    fn take_step(
        &mut self,
        epoch: usize,
        step: usize,
        order: &Tensor,
        augment: &dyn Fn(&TrainBatch) -> TrainBatch,
        sums: &mut RunningSums,
    ) -> Result<f64> {
        let settings = self.settings;
        let train_images = self.train_split.len();
        let start = step as i64 * settings.batch_size;
        let index = order.narrow(0, start, settings.batch_size.min(train_images - start));
        tch::manual_seed(draw_seed(
            settings.seed,
            epoch,
            Some(step),
            self.steps_per_epoch,
        ));
        let inputs = TrainBatch::from(self.train_split.batch(&index));
        let global_step = epoch * self.steps_per_epoch + step;
        let total_steps = self.steps_per_epoch * settings.epochs;
        let warmup_steps = self.steps_per_epoch * settings.warmup_epochs;
        let lr = learning_rate(settings.lr, global_step, warmup_steps, total_steps);
        let step_options = StepOptions {
            label_smoothing: settings.label_smoothing,
            clip_grad: settings.clip_grad,
            precision: settings.precision,
        };
        let (model, optimizer) = (&self.model, &mut self.optimizer);
        let output = match &mut self.cuda_graph {
            Some(graph) => graph.step(model, optimizer, &inputs, augment, lr, step_options)?,
            None => train_step(model, optimizer, &augment(&inputs), lr, step_options),
        };
        if let Some(ema) = &mut self.ema {
            ema.update(global_step + 1);
        }
        let images = index.size()[0];
        sums.loss += output.loss * images as f64;
        sums.correct += output.correct;
        self.progress.seen += images;
        Ok(lr)
    }

    /// Saves the resume state after `steps` steps of `epoch` (0-based), for Ctrl-C.
    fn save_mid_epoch(
        &mut self,
        epoch: usize,
        steps: usize,
        sums: &RunningSums,
        started: Instant,
    ) -> Result<()> {
        let loss_sum = sums.loss.double_value(&[]);
        // Diverged weights must not replace the last good resume state. The loss so far
        // predates the last step's update, which may have sent them to infinity.
        self.mean_training_loss(loss_sum, epoch)?;
        self.ensure_finite("weights' norm", weights_norm(&self.vs), epoch)?;
        let progress = &mut self.progress;
        progress.step_in_epoch = steps;
        progress.loss_sum = loss_sum;
        progress.correct = sums.correct.int64_value(&[]);
        progress.seconds += started.elapsed().as_secs_f64();
        let state = self.resume_state()?;
        self.run.save(vec![(RESUME_STATE, state)])
    }

    /// resume.safetensors' bytes for the training as it stands (see
    /// [`run_folder::resume_state`]).
    fn resume_state(&self) -> Result<Vec<u8>> {
        run_folder::resume_state(
            &self.vs,
            &self.optimizer,
            self.ema.as_ref(),
            &self.progress,
            self.settings,
        )
    }

    /// The end of `epoch`: evaluation, the metrics row, the checkpoints, the resume state,
    /// then (optionally) the curves.
    fn finish_epoch(
        &mut self,
        epoch: usize,
        started: Instant,
        lr: f64,
        sums: RunningSums,
    ) -> Result<()> {
        let train_loss = self.mean_training_loss(sums.loss.double_value(&[]), epoch)?;
        let progress = &self.progress;
        let train_acc = sums.correct.int64_value(&[]) as f64 / progress.seen as f64;
        let train_seconds = progress.seconds + started.elapsed().as_secs_f64();
        let eval_batch = self.settings.batch_size.max(256);
        let test = |model| {
            evaluate(
                model,
                &self.test_split,
                eval_batch,
                self.settings.eval_precision,
            )
        };
        let evaluation = test(&self.model);
        // Weights the last step sent to infinity show only here; they are not saved.
        self.ensure_finite("test loss", evaluation.loss, epoch)?;
        let ema_evaluation = self.ema.as_ref().map(|ema| test(&ema.model));
        let row = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss,
            train_acc,
            test_loss: evaluation.loss,
            test_acc: evaluation.accuracy,
            epoch_seconds: progress.seconds + started.elapsed().as_secs_f64(),
            images_per_second: progress.seen as f64 / train_seconds,
            ema_test_loss: ema_evaluation.as_ref().map(|e| e.loss),
            ema_test_acc: ema_evaluation.as_ref().map(|e| e.accuracy),
        };
        self.run.append_metrics(&row)?;
        // The weights are copied now; the disk writes overlap the next epoch.
        let ema_accuracy = ema_evaluation.map(|evaluation| evaluation.accuracy);
        let files = self.epoch_files(epoch, evaluation.accuracy, ema_accuracy)?;
        self.run.save(files)?;
        self.console.epoch_done(&row);
        // Last, and only a warning on failure: a picture is not worth the epoch.
        self.draw_curves();
        Ok(())
    }

    /// With `--plot`, curves.png (and .svg) of metrics.csv; a warning where they cannot be
    /// drawn.
    fn draw_curves(&self) {
        if self.options.plot {
            let curves = self.run.path(CURVES_PNG);
            if let Err(e) = crate::plot::curves(&[self.run.dir()], &curves) {
                eprintln!("warning: cannot draw {}: {e:#}", curves.display());
            }
        }
    }

    /// The mean training loss of `epoch` (0-based) so far, from its summed `loss_sum`;
    /// an error (see [`Self::ensure_finite`]) when it is NaN or infinite.
    fn mean_training_loss(&self, loss_sum: f64, epoch: usize) -> Result<f64> {
        let mean = loss_sum / self.progress.seen as f64;
        self.ensure_finite("training loss", mean, epoch)?;
        Ok(mean)
    }

    /// Stops a run whose `loss` (`what`) in `epoch` (0-based) became NaN or infinite, saying
    /// where its last good weights are, what to change, and where the next run can go.
    fn ensure_finite(&self, what: &str, loss: f64, epoch: usize) -> Result<()> {
        if !loss.is_finite() {
            let earlier_epochs_finished = epoch > 0;
            let kept = if earlier_epochs_finished {
                format!(
                    "the last good weights are in {}",
                    self.run.path(MODEL_FILES.last).display()
                )
            } else {
                "no epoch finished, so there are no weights to keep".to_string()
            };
            let clipping = if self.settings.clip_grad > 0.0 {
                "a smaller --clip-grad"
            } else {
                "--clip-grad 1 to clip the gradients"
            };
            // A finished epoch's files may still be on their way to disk. A resume of the
            // saved state would replay the same steps, and a fresh run is refused there.
            let saved = earlier_epochs_finished || self.run.holds_results();
            let out = match (self.options.numbers_a_new_folder(), saved) {
                (false, true) => "use another --out: this one keeps what the run saved".into(),
                (false, false) => "the same --out will do, as the run saved nothing there".into(),
                (true, true) => "the same command trains into a new run folder".into(),
                (true, false) => format!(
                    "the same command trains into a new run folder ({} saved nothing: delete \
                     it)",
                    self.run.dir().display()
                ),
            };
            bail!(
                "the {what} became {loss} in epoch {}; stopped ({kept}). Train again with \
                 a lower --lr or --weight-decay, or {clipping}; {out}",
                epoch + 1
            );
        }
        Ok(())
    }

    /// The end of a finished run: the best model's test accuracy, its epoch and its file,
    /// and the EMA's with `--ema`, as the saved state records them (so also for a finished
    /// run resumed, whatever an edit made of metrics.csv since).
    fn say_best_models(&self) {
        for ema in run_folder::kept_models(self.ema.is_some()) {
            let (accuracy, epoch) = self.progress.best(ema);
            let epoch = (epoch > 0).then_some((epoch, self.settings.epochs));
            let file = self.run.path(ModelFiles::of(ema).best);
            self.console.best_model(ema, accuracy, epoch, &file);
        }
    }

    /// The files that end `epoch` (0-based), with the weights copied: the last models, the
    /// best ones when their test `accuracy` improved, then the resume state, which moves
    /// on to the next epoch.
    fn epoch_files(
        &mut self,
        epoch: usize,
        accuracy: f64,
        ema_accuracy: Option<f64>,
    ) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let mut files = Vec::new();
        let ema =
            (self.ema.as_ref().zip(ema_accuracy)).map(|(ema, accuracy)| (true, &ema.vs, accuracy));
        for (is_ema, vs, accuracy) in [(false, &self.vs, accuracy)].into_iter().chain(ema) {
            let bytes = checkpoint::to_bytes(vs, &self.settings.model, &self.metadata)?;
            let ModelFiles { best, last } = ModelFiles::of(is_ema);
            // The last model, and the best when it is that too.
            if self.progress.record_best(is_ema, accuracy, epoch) {
                files.push((*best, bytes.clone()));
            }
            files.push((*last, bytes));
        }
        self.progress = self.progress.after_epochs(epoch + 1);
        // Last: until it lands, a resume replays this epoch from the previous state.
        files.push((RESUME_STATE, self.resume_state()?));
        Ok(files)
    }
}

/// The L2 norm of all the weights in `vs`, in float64 (where the squares of finite
/// float32 weights cannot overflow): NaN or infinite where a weight is.
fn weights_norm(vs: &nn::VarStore) -> f64 {
    let squares: Vec<Tensor> = vs
        .trainable_variables()
        .iter()
        .map(|weights| weights.to_kind(Kind::Double).square().sum(Kind::Double))
        .collect();
    Tensor::stack(&squares, 0)
        .sum(Kind::Double)
        .double_value(&[])
        .sqrt()
}

/// Where a run starts: at epoch 1, or for a resumed `run` where its saved state says (loaded
/// into the weights, optimizer and EMA), which must be a step of an epoch of this data's
/// `steps_per_epoch`; said on stderr.
fn starting_progress(
    run: &RunFolder,
    settings: &TrainSettings,
    vs: &nn::VarStore,
    optimizer: &mut AdamW,
    ema: Option<&Ema>,
    steps_per_epoch: usize,
) -> Result<Progress> {
    let progress = match run.resumed() {
        true => run.load_resume(vs, optimizer, ema, settings)?,
        false => Progress::default(),
    };
    // Runs of earlier versions recorded no data identity: fewer images show here.
    ensure!(
        progress.step_in_epoch < steps_per_epoch,
        "cannot resume {}: it stopped after step {} of epoch {}, but an epoch of the \
         images in {} has {steps_per_epoch} {}: they are not the ones the run trained \
         on; give --data-dir the run's data, or start a new run with another --out",
        run.dir().display(),
        progress.step_in_epoch,
        progress.epochs_done + 1,
        settings.data_dir.display(),
        noun_for(steps_per_epoch, "step")
    );
    if run.resumed() && progress.epochs_done < settings.epochs {
        let epoch = progress.epochs_done + 1;
        let place = match progress.step_in_epoch {
            0 => StopPoint::StartOf(epoch),
            step => StopPoint::AfterStep { epoch, step },
        };
        eprintln!(
            "Resuming {} {place} (of {})",
            run.dir().display(),
            settings.epochs
        );
        note_earlier_evaluations(run);
    }
    Ok(progress)
}

/// Points out the confusion matrices `vit eval` wrote beside `run`'s checkpoints (the
/// model's, and any EMA's) before a resume: the run replaces the checkpoints, and the
/// matrices then describe models no longer there.
fn note_earlier_evaluations(run: &RunFolder) {
    let names: Vec<String> = run_folder::kept_models(true)
        .map(ModelFiles::of)
        .flat_map(|files| [files.best, files.last])
        .flat_map(|file| crate::eval::ReportPaths::beside(&run.path(file)).written_by_vit())
        .map(|matrix| matrix.display().to_string())
        .collect();
    if !names.is_empty() {
        eprintln!(
            "note: vit eval wrote {} from the checkpoints as they were before this resume, \
             which the run replaces (last_model every epoch, best_model when its test \
             accuracy improves): run vit eval again when the run ends",
            names.join(", ")
        );
    }
}

/// The notebook's rule for `best_model`: epoch `epoch`'s (0-based) model is the best so far
/// when its test accuracy beats `best_accuracy`, every earlier epoch's (a tie keeps the
/// earlier model). The first epoch's always is, so that a best model exists even at 0%.
pub(crate) fn is_new_best(accuracy: f64, best_accuracy: f64, epoch: usize) -> bool {
    accuracy > best_accuracy || epoch == 0
}

#[cfg(test)]
mod tests {
    use super::is_new_best;

    #[test]
    fn the_best_model_is_the_first_epoch_with_the_highest_accuracy() {
        let accuracies = [0.0, 0.0, 0.3, 0.2, 0.3, 0.5, 0.5, 0.4];
        let mut best = 0.0;
        let mut saved = Vec::new();
        for (epoch, &accuracy) in accuracies.iter().enumerate() {
            if is_new_best(accuracy, best, epoch) {
                best = accuracy;
                saved.push(epoch);
            }
        }
        // Epoch 0 at 0%, then each rise; not the ties (epochs 1, 4, 6) or the drops.
        assert_eq!(saved, [0, 2, 5]);
    }
}
