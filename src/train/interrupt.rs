//! Ctrl-C (or SIGTERM, SIGHUP) during `vit train`: stop after the current step, save, and
//! print the command that resumes the run.

use super::command::{flags_of, resume_command};
use super::StopPoint;
use anyhow::Result;
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A signal within this time of the first counts as the first one delivered again: a
/// closing terminal sends SIGHUP twice (the kernel and the shell), and make passes on a
/// SIGTERM its process group already got, moments apart.
const REPEAT: Duration = Duration::from_millis(500);

/// A stop asked for by a signal, as the run and the signal handler share it: a signal is
/// either seen by the run or, coming after its end, said to have come too late.
#[derive(Default)]
pub struct Stop {
    /// The flag the training loop reads: set by a first signal while the run goes on.
    pub requested: AtomicBool,
    /// Set by [`Self::finish`]: the run has finished and saved everything. A lock, not a
    /// flag, so that the run's last look at `requested` and a signal come one after the
    /// other, each saying its line under it.
    finished: Mutex<bool>,
    /// Set once the run is set up and about to train: before, as the settings are checked
    /// and the data read, a signal quits at once, as it would end any other command.
    armed: AtomicBool,
}

/// What a signal does.
#[derive(Debug, PartialEq)]
enum Reaction {
    /// Nothing: it repeats the first signal, or comes after the run's end.
    Nothing,
    /// Stop after the current step and save (see [`Stop::signal`]).
    Stop,
    /// Quit at once, without saving.
    Quit,
}

/// The command that resumes the run in progress, for the message of a second signal (which
/// quits from the handler's thread, away from the run): set once the run's folder is known.
static RESUME_COMMAND: Mutex<Option<String>> = Mutex::new(None);

/// Records the command that resumes the run in `run_dir`, started by `command` (its words),
/// for a quit's message.
pub fn note_run_folder(command: &[OsString], run_dir: &Path) {
    let line = resume_command(&flags_of(command), run_dir);
    *RESUME_COMMAND
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(line);
}

/// What a second signal says as it quits: where the run goes on from, and the command
/// (see [`note_run_folder`]) that resumes it there.
fn quit_note() -> String {
    let command = RESUME_COMMAND
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let resume = match command.as_deref() {
        Some(command) => format!("resume with: {command}"),
        // A run without --out whose folder is not made yet: it saved nothing.
        None => "it saved nothing yet, so the same command starts it again".to_string(),
    };
    format!(
        "\nQuit at once, without saving: the run folder keeps the state it saved last, if any \
         (at the end of an epoch, or where an earlier interrupt stopped the run); {resume}"
    )
}

/// Said when a stop came too late to stop the run.
const FINISHED_NOTE: &str = "note: the stop came as the run was ending: it finished and saved \
                             all its epochs; there is nothing to resume";

impl Stop {
    /// A first signal: asks the run to stop after the current step, unless it has finished,
    /// and `say`s which.
    fn signal(&self, say: impl FnOnce(&'static str)) {
        let finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if *finished {
            return say(FINISHED_NOTE);
        }
        self.requested.store(true, Ordering::SeqCst);
        say(
            "Stopping: the run saves its state after the current step (or test pass); a \
             second Ctrl-C (or signal), half a second or more later, quits at once without \
             saving",
        )
    }

    /// What a signal that comes `since_first` after the first one does (None: it is the
    /// first).
    fn reaction(&self, since_first: Option<Duration>) -> Reaction {
        match since_first {
            None => Reaction::Stop,
            Some(since) if since < REPEAT => Reaction::Nothing,
            // Nothing is left to quit: its first signal was told so.
            Some(_) if self.has_finished() => Reaction::Nothing,
            Some(_) => Reaction::Quit,
        }
    }

    /// From now on, a signal stops the run after the current step instead of quitting.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Whether [`Self::finish`] has run: the process is about to exit on its own.
    fn has_finished(&self) -> bool {
        *self.finished.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the run finished and saved; a stop that came before (in its last step or test
    /// pass, or while it saved) is `say`d to have come too late.
    pub fn finish(&self, say: impl FnOnce(&'static str)) {
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        *finished = true;
        if self.requested.load(Ordering::SeqCst) {
            say(FINISHED_NOTE)
        }
    }
}

/// A line on stderr. Not eprintln!, which panics on a closed stderr (and would end the
/// signal handler's thread).
pub fn say_on_stderr(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The stop the training loop reads: the first Ctrl-C (or SIGTERM, SIGHUP) requests it,
/// and the run stops after the current step and saves; a second one (after [`REPEAT`])
/// quits at once.
pub fn stop_on_interrupt() -> Result<Arc<Stop>> {
    let stop = Arc::new(Stop::default());
    let handler_stop = stop.clone();
    let mut first: Option<Instant> = None;
    crate::runtime::on_interrupt(move || {
        if !handler_stop.armed.load(Ordering::SeqCst) {
            crate::runtime::quit_at_once(130)
        }
        match handler_stop.reaction(first.map(|at| at.elapsed())) {
            Reaction::Nothing => {}
            Reaction::Quit => {
                say_on_stderr(&quit_note());
                crate::runtime::quit_at_once(130)
            }
            Reaction::Stop => {
                first = Some(Instant::now());
                // Said at once: the step, or an epoch's test pass, may take a while to
                // finish. On a line of its own, after the progress bar's.
                handler_stop.signal(|line| say_on_stderr(&format!("\n{line}")));
            }
        }
    })?;
    Ok(stop)
}

/// Says where the interrupted run stopped and how to resume it (`command`: the command
/// line that ran it), then exits with 130, as a shell does after Ctrl-C.
pub fn quit_saved(command: &[OsString], at: StopPoint, run_dir: &Path) -> ! {
    // The state is saved whether or not this can be written (`2>&1 | tee` after Ctrl-C
    // ended tee), and the status says so.
    let mut report = format!(
        "Interrupted {at}; the state is saved in {}.\nResume with: ",
        run_dir.display()
    )
    .into_bytes();
    report.extend(resume_command(&flags_of(command), run_dir).into_bytes());
    report.push(b'\n');
    let _ = std::io::stderr().write_all(&report);
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::{Reaction, Stop, FINISHED_NOTE, REPEAT};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// A stop that comes while the run goes on is requested (and, should the run finish
    /// anyway, its end says so); one that comes after the run's end stops nothing and says
    /// so itself; without one, the end says nothing.
    #[test]
    fn a_stop_is_said_to_come_too_late_by_the_run_or_by_the_signal_after_it() {
        let stop = Stop::default();
        let mut said = Vec::new();
        stop.signal(|line| said.push(line));
        assert!(stop.requested.load(Ordering::SeqCst));
        stop.finish(|line| said.push(line));
        assert!(
            said.len() == 2 && said[0].starts_with("Stopping: "),
            "{said:?}"
        );
        assert_eq!(said[1], FINISHED_NOTE);

        let stop = Stop::default();
        let mut said = Vec::new();
        stop.finish(|line| said.push(line));
        assert!(said.is_empty(), "{said:?}");
        stop.signal(|line| said.push(line));
        assert_eq!(said, [FINISHED_NOTE]);
        assert!(!stop.requested.load(Ordering::SeqCst));
        assert!(stop.has_finished() && !Stop::default().has_finished());
    }

    /// The first signal stops the run; one within half a second of it is the first
    /// delivered again (a closing terminal's two SIGHUPs) and does nothing; a later one
    /// quits at once, unless the run has finished and saved: the process is exiting on its
    /// own, and a quit would say, and exit as if, it had not saved.
    #[test]
    fn a_second_signal_quits_unless_it_repeats_the_first_or_the_run_has_finished() {
        let stop = Stop::default();
        assert_eq!(stop.reaction(None), Reaction::Stop);
        assert_eq!(stop.reaction(Some(Duration::ZERO)), Reaction::Nothing);
        let just_under = REPEAT - Duration::from_millis(1);
        assert_eq!(stop.reaction(Some(just_under)), Reaction::Nothing);
        assert_eq!(stop.reaction(Some(REPEAT)), Reaction::Quit);
        assert_eq!(stop.reaction(Some(REPEAT * 20)), Reaction::Quit);
        stop.finish(|_| {});
        assert_eq!(stop.reaction(Some(REPEAT)), Reaction::Nothing);
    }
}
