//! What `vit train` prints: a progress bar on a terminal (nothing per step elsewhere, so
//! CI logs and pipes stay readable), and after every epoch the notebook's
//! `Epoch: N, Validation Accuracy: X.XX%` line with the epoch's other figures.

use super::EpochMetrics;
use std::io::{IsTerminal, Write};
use std::path::Path;
use tch::Tensor;

/// A progress bar on a terminal; off a terminal only the epoch lines.
pub(super) struct Console {
    steps_per_epoch: usize,
    terminal: bool,
}

impl Console {
    /// Running loss/accuracy are read from the device only this often, to keep the
    /// training steps free of synchronisation.
    const REFRESH_EVERY: usize = 20;

    pub(super) fn new(steps_per_epoch: usize) -> Self {
        Self {
            steps_per_epoch,
            terminal: std::io::stdout().is_terminal(),
        }
    }

    /// The progress bar of `epoch` (1-based) of `epochs`, at step `position` (a resumed
    /// epoch starts part way); hidden when stdout is not a terminal.
    pub(super) fn epoch_bar(
        &self,
        epoch: usize,
        epochs: usize,
        position: usize,
    ) -> indicatif::ProgressBar {
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

    /// After step `step` (1-based): moves the bar, and now and then shows the running loss
    /// and accuracy of the `seen` images from the epoch's sums, `loss_sum` (double []) and
    /// `correct` (int64 []), still on the device.
    pub(super) fn step(
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

    /// A finished run's best model (with `ema`, its best EMA model): its test `accuracy`,
    /// its `epoch` of the run's epochs where known, and its `checkpoint`, which a user may
    /// have moved away since.
    pub(super) fn best_model(
        &self,
        ema: bool,
        accuracy: f64,
        epoch: Option<(usize, usize)>,
        checkpoint: &Path,
    ) {
        let epoch = match epoch {
            Some((epoch, epochs)) => format!(" (epoch {epoch} of {epochs})"),
            None => String::new(),
        };
        let checkpoint = match checkpoint.exists() {
            true => format!("saved as {}", checkpoint.display()),
            false => format!("{} is no longer there", checkpoint.display()),
        };
        let which = if ema { "EMA " } else { "" };
        let _ = writeln!(
            std::io::stdout(),
            "Best {which}Validation Accuracy: {:.2}%{epoch}, {checkpoint}",
            100.0 * accuracy
        );
    }

    /// The notebook's line for a finished epoch ("Epoch: N, Validation Accuracy: ...")
    /// with the rest of its metrics.csv row.
    pub(super) fn epoch_done(&self, row: &EpochMetrics) {
        let ema = match row.ema_test_acc {
            Some(accuracy) => format!(", EMA acc {:.2}%", 100.0 * accuracy),
            None => String::new(),
        };
        // A closed stdout (`vit train | head`) must not stop the run: the line is dropped.
        let _ = writeln!(
            std::io::stdout(),
            "Epoch: {}, Validation Accuracy: {:.2}%  (train loss {:.4}, train acc {:.2}%, \
             test loss {:.4}{ema}, lr {:.2e}, {:.1}s, {:.0} img/s)",
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
