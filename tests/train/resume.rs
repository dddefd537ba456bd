//! `--resume`: a resumed run is the run that was not stopped, to the last digit, and a
//! resume that cannot be exact is refused with what to do.

use crate::common::{assert_contains, seeded, send, vit, vit_fails, TempDir};
use crate::{
    colour_cifar10, colour_dataset, common, options, read_metrics, refused_resume, run_training,
    start_training, tiny_run_args, tiny_settings, wait_for_first_epoch, write_as_cifar10,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use vit_tch::checkpoint::TensorFile;
use vit_tch::cli::{Precision, Recipe};
use vit_tch::data::augment::{Policy, RandAugment};
use vit_tch::data::Dataset;
use vit_tch::fsutil::temporary_sibling;
use vit_tch::train::{self, Outcome, Regularization, RunOptions, StopPoint, TrainSettings};

/// A resume in a folder that takes no file is refused before it trains: its first write
/// comes at the end of an epoch, whose training would be lost. Here the files vit may
/// write are limited to 1 KiB (RLIMIT_FSIZE, which binds root too, unlike permissions),
/// and the run keeps what it saved. A finished run's resume, which writes nothing, is not
/// refused.
#[test]
fn a_resume_in_a_folder_that_takes_no_file_is_refused_before_it_trains() {
    let (root, data_dir) = colour_cifar10("resume-unwritable");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    #[rustfmt::skip]
    args.extend(["--epochs", "50", "--batch-size", "1", "--train-subset", "100"]);
    let child = start_training(&args, &run);
    wait_for_first_epoch(&run);
    send("-INT", &child);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let saved =
        ["metrics.csv", "resume.safetensors"].map(|name| std::fs::read(run.join(name)).unwrap());

    let resume_limited = |args: &[&str]| {
        let mut command = Command::new(common::vit_binary());
        common::with_limit(
            command.args(args).arg("--resume"),
            libc::RLIMIT_FSIZE,
            1 << 10,
        )
        .output()
        .unwrap()
    };
    let output = resume_limited(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        !output.status.success() && !stdout.contains("Epoch: "),
        "{stdout}\n{stderr}"
    );
    let expected = format!(
        "cannot write to {} (is it writable? Once it is, resume the run (--out {} --resume)",
        run.display(),
        run.display()
    );
    assert_contains(&stderr, &expected);
    let kept =
        ["metrics.csv", "resume.safetensors"].map(|name| std::fs::read(run.join(name)).unwrap());
    assert!(kept == saved, "the resume changed the run's files");

    // A finished run writes nothing: its resume goes on there, also without its state
    // (which only an unfinished run needs).
    let finished = root.join("finished");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), finished.to_str().unwrap());
    #[rustfmt::skip]
    args.extend(["--epochs", "1", "--batch-size", "100", "--train-subset", "100"]);
    vit(&args);
    std::fs::remove_file(finished.join("resume.safetensors")).unwrap();
    let output = resume_limited(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.contains("nothing to train"),
        "{stderr}"
    );
}

/// The command a refused resume gives works from wherever it is given: relative paths are
/// those of the folder the run started in, so from another folder it goes there first
/// (with the run folder made absolute); a run in the default folder is resumed from the
/// folder it got. A run of an earlier version, which recorded no command, is sent to its
/// config.json instead.
#[test]
fn a_refused_resume_gives_a_command_that_resumes_the_run_from_anywhere() {
    let (root, _) = colour_cifar10("resume-anywhere");
    let binary = common::vit_binary().into_string().unwrap();
    #[rustfmt::skip]
    let flags = ["train", "--dataset", "cifar10", "--data-dir", "data", "--device", "cpu", "--config",
                 "tiny", "--patch-size", "8", "--epochs", "1", "--warmup-epochs", "0"];
    let run_in = |folder: &Path, args: &[&str]| {
        Command::new(&binary)
            .args(args)
            .current_dir(folder)
            .output()
            .unwrap()
    };
    // Without --out: the run folder runs/<time>, relative to where it started.
    let started = run_in(&root.0, &flags);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join("runs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = runs[0]
        .strip_prefix(&root.0)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let absolute = root.join(&run);
    for (folder, out, command) in [
        (
            root.0.as_path(),
            run.clone(),
            format!("{binary} {} --out {run} --resume", flags.join(" ")),
        ),
        (
            elsewhere.as_path(),
            absolute.to_str().unwrap().to_string(),
            format!(
                "cd {} && {binary} {} --out {} --resume",
                root.0.display(),
                flags.join(" "),
                absolute.display()
            ),
        ),
    ] {
        // Without the run's flags: the default dataset, CIFAR-100, is not the run's.
        let refused = run_in(folder, &["train", "--out", &out, "--resume"]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success()
                && stderr.contains(&format!(
                    "Resume with the flags the run started with: {command}\n"
                )),
            "{command:?} not in {stderr}"
        );
        let resumed = Command::new("sh")
            .args(["-c", &command])
            .current_dir(folder)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        assert!(
            resumed.status.success() && stderr.contains("nothing to train"),
            "{command}: {stderr}"
        );
    }
    // A run of an earlier version recorded no command: the refusal points to where its
    // flags are, config.json.
    let config_path = absolute.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let recorded = config.as_object_mut().unwrap().remove("command");
    assert!(recorded.is_some(), "{config}");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let refused = run_in(&root.0, &["train", "--out", &run, "--resume"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains(
                "Resume with the flags the run started with (its config.json records them)\n"
            ),
        "{stderr}"
    );
}

/// A run resumes from a copy of its data in another folder (a job's scratch copy, a moved
/// project), with a note; data that changed is refused, naming what differs. A run of an
/// earlier version, which recorded only the folder, still compares the folder.
#[test]
fn resume_follows_the_images_not_their_folder() {
    let (root, data_dir) = colour_cifar10("resume-data");
    let run = root.join("run");
    fn args<'a>(data: &'a Path, run: &'a Path, resume: bool) -> Vec<&'a str> {
        let mut args = tiny_run_args(data.to_str().unwrap(), run.to_str().unwrap());
        #[rustfmt::skip]
        args.extend(["--epochs", "1", "--batch-size", "100", "--train-subset", "100", "--warmup-epochs", "0"]);
        if resume {
            args.push("--resume");
        }
        args
    }
    vit(&args(&data_dir, &run, false));
    let moved = root.join("scratch").join("data");
    let mut dataset = {
        let _turn = seeded(0);
        colour_dataset()
    };
    write_as_cifar10(&dataset, &moved);
    let output = vit(&args(&moved, &run, true));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("it goes on with the same images from")
            && stderr.contains("already finished its 1 epoch; nothing to train"),
        "{stderr}"
    );
    // A fresh run into the finished one's folder is refused, in the singular too.
    let stderr = vit_fails(&args(&data_dir, &run, false));
    assert_contains(
        &stderr,
        "already holds a run that finished its 1 epoch; choose another --out",
    );
    // A --data-dir without the data (say, the default where it was left out): the folder
    // the run read is named, not a download.
    let stderr = vit_fails(&args(&root.join("elsewhere"), &run, true));
    let started = std::fs::canonicalize(&data_dir).unwrap();
    let advice = format!("pass --data-dir {} to resume it", started.display());
    assert_contains(&stderr, &advice);
    // The run's own folder, its data damaged: the error is the data's, with no advice to
    // pass the folder that was given.
    let batch = data_dir.join("cifar-10-batches-bin/test_batch.bin");
    let aside = root.join("test_batch.bin");
    std::fs::rename(&batch, &aside).unwrap();
    let stderr = vit_fails(&args(&data_dir, &run, true));
    assert!(
        stderr.contains("test_batch.bin is missing") && !stderr.contains("the run read its images"),
        "{stderr}"
    );
    std::fs::rename(&aside, &batch).unwrap();

    // One test label changed: another dataset for the run, refused.
    let label = dataset.test.labels.int64_value(&[0]);
    let _ = dataset.test.labels.get(0).fill_((label + 1) % 10);
    write_as_cifar10(&dataset, &moved);
    let stderr = vit_fails(&args(&moved, &run, true));
    assert!(
        stderr.contains("are not the ones the run trained on")
            && stderr.contains("data.fingerprint: saved"),
        "{stderr}"
    );
    // Fewer test images: the count is named too.
    dataset.test = dataset.test.subset(150);
    write_as_cifar10(&dataset, &moved);
    let stderr = vit_fails(&args(&moved, &run, true));
    assert_contains(&stderr, "data.test_images: saved 200, given 150");

    // config.json of an earlier version: no record of the images, so the folder counts;
    // no --eval-precision either, so the test passes were fp32.
    let config_path = run.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("data");
    let settings = config["settings"].as_object_mut().unwrap();
    assert!(settings.remove("eval_precision").is_some(), "{settings:?}");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let original = {
        let _turn = seeded(0);
        colour_dataset()
    };
    write_as_cifar10(&original, &moved);
    let stderr = vit_fails(&args(&moved, &run, true));
    assert_contains(&stderr, "data_dir (--data-dir): saved");
    vit(&args(&data_dir, &run, true));

    // A resume state cut short names itself and says what to do.
    let state = run.join("resume.safetensors");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let stderr = vit_fails(&args(&data_dir, &run, true));
    assert_contains(
        &stderr,
        "its resume.safetensors is damaged or not this run's; start a new run",
    );
    // So is one whole but with a NaN in it, which training on would spread (a NaN in the
    // EMA weights trained to the end, saving NaN weights).
    std::fs::write(&state, &bytes).unwrap();
    let file = vit_tch::checkpoint::TensorFile::read(&state).unwrap();
    let _ = file.get("model.head.bias").unwrap().get(0).fill_(f64::NAN);
    file.write(&state).unwrap();
    let stderr = vit_fails(&args(&data_dir, &run, true));
    assert!(
        stderr.contains("its resume.safetensors is damaged or not this run's")
            && stderr.contains("it has NaN or infinite values in [\"model.head.bias\"]"),
        "{stderr}"
    );

    // A run of an earlier version stopped mid-epoch, whose images then shrank where they
    // are: the saved step lies beyond the epoch's end (it resumed into an empty epoch).
    // Trained in this process: the generator's turn is held to the end.
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let legacy = root.join("legacy");
    let settings = tiny_settings(2, 100);
    let first = run_training(&settings, &dataset, &legacy, false, true);
    assert!(matches!(
        first,
        Outcome::Interrupted {
            at: StopPoint::AfterStep { epoch: 1, step: 1 },
            ..
        }
    ));
    let config_path = legacy.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("data");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let fewer = Dataset {
        train: dataset.train.subset(100),
        ..colour_dataset()
    };
    let error = refused_resume(&settings, &fewer, &legacy);
    assert!(error.contains("but an epoch of the images in"), "{error:#}");
}

/// A resume points out the confusion matrices `vit eval` wrote beside the run's
/// checkpoints, which the run goes on to replace; a resume without them says nothing of it,
/// nor of a file of the user's at such a name. Twenty epochs of one step each: Ctrl-C,
/// sent as the run starts, lands at the end of an epoch before the last.
#[test]
fn a_resume_points_out_confusion_matrices_of_the_checkpoints_it_replaces() {
    let (root, data_dir) = colour_cifar10("resume-stale-matrix");
    let run = root.join("run");
    let (data, out) = (data_dir.to_str().unwrap(), run.to_str().unwrap());
    let mut args = tiny_run_args(data, out);
    // One step an epoch, so that Ctrl-C lands at an epoch's end, with its checkpoints.
    #[rustfmt::skip]
    args.extend(["--epochs", "20", "--batch-size", "64", "--train-subset", "64", "--warmup-epochs", "1"]);
    let child = start_training(&args, &run);
    send("-INT", &child);
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let unfinished = root.join("unfinished");
    let copied = Command::new("cp")
        .arg("-a")
        .args([&run, &unfinished])
        .status();
    assert!(copied.unwrap().success());
    let best = run.join("best_model.safetensors");
    #[rustfmt::skip]
    vit(&["eval", "--checkpoint", best.to_str().unwrap(), "--data-dir", data, "--device", "cpu"]);
    let matrix = run.join("best_model.confusion_matrix.csv");
    assert!(matrix.is_file());
    let resume = [&args[..], &["--resume"]].concat();
    let stderr = String::from_utf8_lossy(&vit(&resume).stderr).into_owned();
    assert!(
        stderr.contains(&format!(
            "note: vit eval wrote {} from the checkpoints as they were before this resume, \
             which the run replaces (last_model every epoch, best_model when its test accuracy \
             improves): run vit eval again when the run ends",
            matrix.display()
        )),
        "{stderr}"
    );
    // The same stopped run, never evaluated, with a file of the user's at a matrix's name.
    std::fs::remove_dir_all(&run).unwrap();
    std::fs::rename(&unfinished, &run).unwrap();
    std::fs::write(run.join("last_model.confusion_matrix.csv"), "my notes\n").unwrap();
    let stderr = String::from_utf8_lossy(&vit(&resume).stderr).into_owned();
    assert!(
        stderr.contains("Resuming") && !stderr.contains("confusion_matrix"),
        "{stderr}"
    );
}

/// Trains `settings` straight through into `straight`, and into `interrupted` until the
/// interrupt flag stops it at its first chance, which must be `stop`.
fn train_straight_and_interrupted(
    settings: &TrainSettings,
    dataset: &Dataset,
    straight: &Path,
    interrupted: &Path,
    stop: StopPoint,
) {
    run_training(settings, dataset, straight, false, false);
    match run_training(settings, dataset, interrupted, false, true) {
        Outcome::Interrupted { at, .. } => assert_eq!(at, stop),
        Outcome::Finished => panic!("the interrupted run finished"),
    }
}

/// Rows without the two timing columns (epoch_seconds, images_per_second), which differ
/// from run to run.
fn metrics_without_timing(run: &Path) -> Vec<Vec<String>> {
    read_metrics(run)
        .1
        .into_iter()
        .map(|row| [&row[..6], &row[8..]].concat())
        .collect()
}

/// The two runs wrote the same metrics, the same final weights (and EMA weights) and the
/// same best models.
fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(metrics_without_timing(a), metrics_without_timing(b));
    #[rustfmt::skip]
    let checkpoints = ["last_model.safetensors", "last_ema_model.safetensors",
                       "best_model.safetensors", "best_ema_model.safetensors"];
    for checkpoint in checkpoints {
        // Only runs with an EMA have its checkpoint.
        if checkpoint.contains("ema") && !a.join(checkpoint).exists() {
            continue;
        }
        let read = |run: &Path| {
            vit_tch::checkpoint::TensorFile::read(&run.join(checkpoint))
                .unwrap()
                .tensors
        };
        let (ta, tb) = (read(a), read(b));
        assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
        for (name, tensor) in &ta {
            assert!(
                tensor.equal(&tb[name]),
                "{name} of {checkpoint} differs after resume"
            );
        }
        // And the files themselves, metadata included: the same bytes, the same hash.
        let bytes = |run: &Path| std::fs::read(run.join(checkpoint)).unwrap();
        assert!(bytes(a) == bytes(b), "{checkpoint} has other bytes");
    }
}

/// A resume test's set-up: `settings` trained on the colour dataset straight through into
/// `straight` and, interrupted (as by Ctrl-C) at its first chance, which must be `stop`,
/// into `interrupted`; both folders in the temporary folder `root`. Holds the lock on the
/// random generator (see `seeded`) for as long as it lives.
struct StraightAndInterrupted {
    settings: TrainSettings,
    dataset: Dataset,
    root: TempDir,
    straight: PathBuf,
    interrupted: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl StraightAndInterrupted {
    /// Trains both runs in a new temporary folder named after `temp_name`.
    fn new(temp_name: &str, settings: TrainSettings, stop: StopPoint) -> Self {
        let turn = seeded(0);
        let dataset = colour_dataset();
        let root = TempDir::new(temp_name);
        let (straight, interrupted) = (root.join("straight"), root.join("interrupted"));
        train_straight_and_interrupted(&settings, &dataset, &straight, &interrupted, stop);
        Self {
            settings,
            dataset,
            root,
            straight,
            interrupted,
            _turn: turn,
        }
    }

    /// Resumes the interrupted run to its end.
    fn resume(&self) -> Outcome {
        run_training(
            &self.settings,
            &self.dataset,
            &self.interrupted,
            true,
            false,
        )
    }

    /// Resumes the interrupted run, which must then match the straight one (see
    /// `assert_same_run`).
    fn resume_matches_straight(&self) {
        self.resume();
        assert_same_run(&self.straight, &self.interrupted);
    }

    /// The error of a resume of the interrupted run that must be refused, as printed.
    fn refused_resume(&self) -> String {
        refused_resume(&self.settings, &self.dataset, &self.interrupted)
    }
}

#[test]
fn resume_at_an_epoch_boundary_is_exact() {
    // One step per epoch: the interrupt lands at the end of epoch 1.
    let runs =
        StraightAndInterrupted::new("resume-epoch", tiny_settings(2, 600), StopPoint::EndOf(1));
    let resumed = &runs.interrupted;
    assert_eq!(read_metrics(resumed).1.len(), 1);

    // A metrics.csv that lost the finished epoch's row is refused and left as it is...
    let metrics = resumed.join("metrics.csv");
    let saved = std::fs::read_to_string(&metrics).unwrap();
    let header_only = format!("{}\n", saved.lines().next().unwrap());
    std::fs::write(&metrics, &header_only).unwrap();
    let error = runs.refused_resume();
    // (Its rows written before the state, this is rows removed, or another run's state.)
    assert!(
        error.contains(
            "finished 1 epoch, so metrics.csv should hold its header and the row of epoch 1, \
         but its rows are for epochs []: rows were removed from metrics.csv, or \
         resume.safetensors is another run's. Put back the run's own files, or start a new \
         run with another --out"
        ),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), header_only);
    // ...as is one whose header is not vit's, though its rows read under it (two columns
    // renamed into each other's places: the resumed rows would go under the wrong names).
    let swapped = saved
        .replacen("train_acc", "TRAIN_ACC", 1)
        .replacen("test_acc", "train_acc", 1)
        .replacen("TRAIN_ACC", "test_acc", 1);
    assert_ne!(swapped, saved);
    std::fs::write(&metrics, &swapped).unwrap();
    let error = runs.refused_resume();
    assert!(
        error.contains(
            "but its first line is not the header vit writes. Put back the run's own \
             metrics.csv, or start a new run with another --out"
        ),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), swapped);
    // ...while a row after the saved state (a crash between the two writes) is dropped.
    let extra_row = saved.lines().nth(1).unwrap().replacen("1,", "2,", 1);
    let crashed = format!("{saved}{extra_row}\n");
    std::fs::write(&metrics, &crashed).unwrap();
    // With that row, metrics.csv has all the run's epochs, but the run has not finished:
    // a fresh run there is told to resume it.
    let flag = AtomicBool::new(false);
    let fresh = train::train(
        &runs.settings,
        &runs.dataset,
        &options(resumed, false, &flag),
    );
    let error = format!(
        "{:#}",
        fresh.err().expect("a fresh run over an unfinished one")
    );
    assert_contains(&error, "pass --resume to continue it");
    // A line of the user's after that row would have the resumed rows after it: refused,
    // and kept.
    let with_note = format!("{crashed}# a note\n");
    std::fs::write(&metrics, &with_note).unwrap();
    let error = runs.refused_resume();
    assert_contains(&error, "line 4 of its metrics.csv");
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), with_note);
    std::fs::write(&metrics, &crashed).unwrap();

    runs.resume_matches_straight();

    // A finished run's resume writes nothing: a line added to its metrics.csv stays.
    let finished = std::fs::read_to_string(&metrics).unwrap() + "# best so far\n";
    std::fs::write(&metrics, &finished).unwrap();
    runs.resume();
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), finished);
}

#[test]
fn resume_in_the_middle_of_an_epoch_is_exact() {
    let stop = StopPoint::AfterStep { epoch: 1, step: 1 };
    StraightAndInterrupted::new("resume-step", tiny_settings(2, 200), stop)
        .resume_matches_straight();
}

/// An epoch's epoch_seconds and images_per_second count the seconds it trained before an
/// interruption, as its saved state records them (set to 1,000 here, so that the resumed
/// row shows them), and images_per_second is over the training steps alone: the epoch's
/// images took fewer seconds than the epoch, whose test pass came after them.
#[test]
fn a_resumed_epoch_counts_the_seconds_it_trained_before_it_stopped() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("resume-seconds");
    let run = root.join("run");
    // Three steps an epoch: the interrupt lands after the first.
    let settings = tiny_settings(1, 200);
    let stopped = run_training(&settings, &dataset, &run, false, true);
    let at_step_1 = StopPoint::AfterStep { epoch: 1, step: 1 };
    assert!(matches!(stopped, Outcome::Interrupted { at, .. } if at == at_step_1));
    let state_path = run.join("resume.safetensors");
    let mut state = TensorFile::read(&state_path).unwrap();
    let mut progress: serde_json::Value =
        serde_json::from_str(&state.metadata["progress"]).unwrap();
    let saved = progress["seconds"].as_f64().unwrap();
    assert!(
        saved > 0.0,
        "the first step's seconds were not saved: {progress}"
    );
    progress["seconds"] = 1000.0.into();
    state
        .metadata
        .insert("progress".into(), progress.to_string());
    std::fs::write(&state_path, state.to_bytes().unwrap()).unwrap();
    run_training(&settings, &dataset, &run, true, false);
    let (header, rows) = read_metrics(&run);
    let column = |name: &str| -> f64 {
        let index = header.iter().position(|h| h == name).unwrap();
        rows[0][index].parse().unwrap()
    };
    let epoch_seconds = column("epoch_seconds");
    let training_seconds = 600.0 / column("images_per_second");
    assert!(
        1000.0 < training_seconds && training_seconds < epoch_seconds,
        "600 images trained in {training_seconds} s of an epoch of {epoch_seconds} s"
    );
}

#[test]
fn resume_with_changed_settings_is_refused() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("resume-changed");
    let run = root.join("run");
    run_training(&tiny_settings(1, 600), &dataset, &run, false, true);
    let mut changed = tiny_settings(1, 600);
    changed.lr = 1e-2;
    changed.model.embed_dim = 64;
    // Another precision of the test passes: its metrics and best model would mix two.
    changed.eval_precision = Precision::Bf16;
    // Each difference by name, and nothing else.
    assert_settings_differ(
        &refused_resume(&changed, &dataset, &run),
        &[
            "  eval_precision (--eval-precision): saved \"fp32\", given \"bf16\"",
            "  lr (--lr): saved 0.003, given 0.01",
            "  model.embed_dim (--embed-dim): saved 32, given 64",
        ],
    );
}

/// A resume.safetensors that is not the run's is refused, and the run's files kept: one of
/// a run with other settings (named), and one older than metrics.csv's rows (a crash leaves
/// at most one row after the state), which the resume would have dropped.
#[test]
fn a_resume_state_of_another_run_or_an_older_one_is_refused() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("resume-foreign");
    let settings = tiny_settings(4, 600);
    // One step per epoch: each interrupted run or resume stops at the end of an epoch.
    let (run, other) = (root.join("run"), root.join("other"));
    run_training(&settings, &dataset, &run, false, true);
    let first_state = std::fs::read(run.join("resume.safetensors")).unwrap();
    run_training(&settings, &dataset, &run, true, true);
    run_training(&settings, &dataset, &run, true, true);
    assert_eq!(read_metrics(&run).1.len(), 3);
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let own_state = std::fs::read(run.join("resume.safetensors")).unwrap();

    let other_settings = TrainSettings {
        seed: 8,
        ..settings.clone()
    };
    run_training(&other_settings, &dataset, &other, false, true);
    std::fs::copy(
        other.join("resume.safetensors"),
        run.join("resume.safetensors"),
    )
    .unwrap();
    let error = refused_resume(&settings, &dataset, &run);
    assert!(
        error.contains(
            "its resume.safetensors is damaged or not this run's; start a new run with \
             another --out"
        ) && error.contains(
            "it was saved by a run with other settings (saved: the state's, given: this \
             run's):\n  seed (--seed): saved 8, given 7"
        ),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv")).unwrap(),
        metrics
    );

    std::fs::write(run.join("resume.safetensors"), &first_state).unwrap();
    let error = refused_resume(&settings, &dataset, &run);
    assert!(
        error.contains(
            "its metrics.csv holds the rows of epochs 2 to 3 after those of the 1 epoch its \
             resume.safetensors has finished, but a run's rows are never more than one \
             epoch ahead of its state: that state is an older one, or another run's"
        ),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv")).unwrap(),
        metrics
    );

    // With its own state back, the run goes on.
    std::fs::write(run.join("resume.safetensors"), &own_state).unwrap();
    run_training(&settings, &dataset, &run, true, false);
    assert_eq!(read_metrics(&run).1.len(), 4);
}

/// Asserts that `error`, a resume refused for changed settings, names `differences` (one a
/// line) and nothing else, between its first line and the command that resumes the run.
fn assert_settings_differ(error: &str, differences: &[&str]) {
    let lines: Vec<&str> = error.lines().collect();
    let after = differences.len() + 1;
    assert!(lines.len() > after, "{error}");
    assert!(
        lines[0].ends_with("the settings differ from the saved run's:"),
        "{error}"
    );
    assert_eq!(lines[1..after], *differences, "{error}");
    assert!(
        lines[after].starts_with("Resume with the same flags"),
        "{error}"
    );
}

/// --plot draws curves.png and curves.svg into the run folder after each epoch (here
/// the first of two, where the run stops). A resume with --plot is refused where either
/// is a file of the user's (vit plot refuses the same), and the file is kept; with vit's
/// own pictures or none there, the run resumes.
#[test]
fn a_resume_with_plot_keeps_the_users_pictures() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("resume-plot");
    let run = root.join("run");
    let settings = tiny_settings(2, 600);
    let interrupt = AtomicBool::new(true);
    let first_epoch = RunOptions {
        plot: true,
        ..options(&run, false, &interrupt)
    };
    train::train(&settings, &dataset, &first_epoch).unwrap();
    assert_eq!(read_metrics(&run).1.len(), 1);
    assert!(run.join("curves.png").is_file() && run.join("curves.svg").is_file());
    let flag = AtomicBool::new(false);
    let with_plot = RunOptions {
        plot: true,
        ..options(&run, true, &flag)
    };
    let mut users_png = Vec::new();
    image::RgbImage::new(4, 4)
        .write_to(
            &mut std::io::Cursor::new(&mut users_png),
            image::ImageFormat::Png,
        )
        .unwrap();
    let users_svg = b"<svg>my own drawing</svg>".to_vec();
    for (name, content) in [("curves.png", users_png), ("curves.svg", users_svg)] {
        let path = run.join(name);
        std::fs::write(&path, &content).unwrap();
        let error = match train::train(&settings, &dataset, &with_plot) {
            Ok(_) => panic!("a resume with --plot replaced {name}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains(&format!("{} is already there, and is not ", path.display()))
                && error.ends_with("Move that file away, or leave out --plot (vit plot RUN_DIR -o NAME.png draws the curves elsewhere)"),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), content);
        std::fs::remove_file(&path).unwrap();
    }
    train::train(&settings, &dataset, &with_plot).unwrap();
    assert!(run.join("curves.png").is_file() && run.join("curves.svg").is_file());
    assert_eq!(read_metrics(&run).1.len(), 2);
}

/// `vit train --resume --plot` refuses a user's curves.png before it reads the data (here
/// gone, which would otherwise be the error).
#[test]
fn a_resume_with_plot_is_refused_before_the_data_is_read() {
    let (root, data_dir) = colour_cifar10("resume-plot-early");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    args.extend([
        "--epochs",
        "1",
        "--batch-size",
        "100",
        "--train-subset",
        "100",
    ]);
    vit(&args);
    std::fs::remove_dir_all(&data_dir).unwrap();
    std::fs::write(run.join("curves.png"), "my picture").unwrap();
    args.extend(["--resume", "--plot"]);
    let stderr = vit_fails(&args);
    assert!(
        stderr.contains(&format!(
            "{} is already there, and is not a picture vit drew",
            run.join("curves.png").display()
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("curves.png")).unwrap(),
        "my picture"
    );
}

/// The strong recipe's settings are named with the flag that sets them, however deep in
/// config.json; a policy changed or a part switched off is said in a word.
#[test]
fn resume_with_changed_strong_recipe_names_its_flags() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("resume-changed-strong");
    let run = root.join("run");
    let strong = TrainSettings {
        recipe: Recipe::Strong,
        regularization: Regularization {
            ema: Some(0.999),
            ..common::strong_augmentation()
        },
        ..tiny_settings(1, 600)
    };
    run_training(&strong, &dataset, &run, false, true);
    let mut changed = strong.clone();
    let augment = changed.regularization.augment.as_mut().unwrap();
    augment.policy = Some(Policy::RandAugment(RandAugment::default()));
    augment.erasing.as_mut().unwrap().p = 0.3;
    changed.regularization.mix.as_mut().unwrap().mixup_alpha = 0.5;
    changed.regularization.ema = None;
    assert_settings_differ(
        &refused_resume(&changed, &dataset, &run),
        &[
            "  regularization.augment.erasing.p (--random-erasing): saved 0.25, given 0.3",
            "  regularization.augment.policy (--augment-policy): saved autoaugment, given \
             randaugment (2 ops, magnitude 9)",
            "  regularization.ema (--ema): saved 0.999, given off",
            "  regularization.mix.mixup_alpha (--mixup): saved 0.8, given 0.5",
        ],
    );
}

/// `tiny_settings` with the strong recipe: its augmentations and regularisers, and an EMA.
fn strong_settings(epochs: usize, batch_size: i64) -> TrainSettings {
    TrainSettings {
        recipe: Recipe::Strong,
        regularization: Regularization {
            drop_path: 0.1,
            attn_dropout: 0.1,
            ema: Some(0.9),
            ema_warmup: false,
            ..common::strong_augmentation()
        },
        ..tiny_settings(epochs, batch_size)
    }
}

#[test]
fn strong_recipe_with_ema_resumes_exactly() {
    let stop = StopPoint::AfterStep { epoch: 1, step: 1 };
    let runs = StraightAndInterrupted::new("resume-strong", strong_settings(2, 200), stop);
    runs.resume_matches_straight();
    let straight = &runs.straight;
    let (header, rows) = read_metrics(straight);
    let ema_acc = header.iter().position(|h| h == "ema_test_acc").unwrap();
    assert!(
        rows.iter().all(|row| row[ema_acc].parse::<f64>().is_ok()),
        "{rows:?}"
    );
    for name in ["best_ema_model.safetensors", "last_ema_model.safetensors"] {
        assert!(straight.join(name).exists(), "{name} missing");
    }
    let ema = vit_tch::checkpoint::TensorFile::read(&straight.join("last_ema_model.safetensors"))
        .unwrap();
    let last =
        vit_tch::checkpoint::TensorFile::read(&straight.join("last_model.safetensors")).unwrap();
    assert!(!ema
        .get("head.weight")
        .unwrap()
        .equal(last.get("head.weight").unwrap()));
}

/// A best model moved away (to hand it in, say) is written again only by an epoch that
/// beats it, so the finished run would lack it: the resume is refused, with the run folder
/// left as it was, until the file is back; then it resumes exactly.
#[test]
fn resume_without_a_best_model_is_refused_until_it_is_back() {
    let runs = StraightAndInterrupted::new(
        "resume-best-moved",
        strong_settings(2, 600),
        StopPoint::EndOf(1),
    );
    let resumed = &runs.interrupted;
    let metrics = std::fs::read(resumed.join("metrics.csv")).unwrap();
    for name in ["best_model.safetensors", "best_ema_model.safetensors"] {
        let (best, away) = (resumed.join(name), runs.root.join(name));
        std::fs::rename(&best, &away).unwrap();
        let error = runs.refused_resume();
        assert!(
            error.contains(&format!("its {name} (test accuracy ")) && error.contains("Put it back"),
            "{error}"
        );
        assert_eq!(std::fs::read(resumed.join("metrics.csv")).unwrap(), metrics);
        std::fs::rename(&away, &best).unwrap();
    }
    runs.resume_matches_straight();
    // A finished run, its best model handed in: a resume has nothing to train, and says so.
    std::fs::remove_file(resumed.join("best_model.safetensors")).unwrap();
    assert!(matches!(runs.resume(), Outcome::Finished));
}

/// The refusal of a resume without its best model, word for word: the file's test
/// accuracy (metrics.csv's best) and the epochs it is the best of, "1 epoch" after the
/// first and "2 epochs" after the second (a resume interrupted at its first chance).
#[test]
fn a_missing_best_model_is_refused_naming_its_accuracy_and_epochs() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("resume-best-epochs");
    let run = root.join("run");
    // One step an epoch: each interrupted run stops at the end of its first epoch.
    let settings = tiny_settings(3, 600);
    let (best, away) = (
        run.join("best_model.safetensors"),
        root.join("best_model.safetensors"),
    );
    for (resume, epochs_done) in [(false, "1 epoch"), (true, "2 epochs")] {
        let outcome = run_training(&settings, &dataset, &run, resume, true);
        assert!(matches!(outcome, Outcome::Interrupted { .. }));
        let (header, rows) = read_metrics(&run);
        let test_acc = header.iter().position(|h| h == "test_acc").unwrap();
        let best_accuracy = rows
            .iter()
            .map(|row| row[test_acc].parse::<f64>().unwrap())
            .fold(0.0, f64::max);
        std::fs::rename(&best, &away).unwrap();
        let dir = run.display();
        assert_eq!(
            refused_resume(&settings, &dataset, &run),
            format!(
                "cannot resume {dir}: its best_model.safetensors (test accuracy {:.2}%, the \
                 best of its {epochs_done}) is missing, and the run writes it again only for \
                 an epoch that beats it. Put it back in {dir}, or start a new run with \
                 another --out",
                100.0 * best_accuracy
            )
        );
        std::fs::rename(&away, &best).unwrap();
    }
}

#[test]
fn resume_of_a_run_killed_before_its_first_save_starts_over() {
    let stop = StopPoint::AfterStep { epoch: 1, step: 1 };
    let runs = StraightAndInterrupted::new("resume-unsaved", tiny_settings(2, 200), stop);
    let (dataset, root) = (&runs.dataset, &runs.root);
    // As if killed before resume.safetensors was first written.
    std::fs::remove_file(runs.interrupted.join("resume.safetensors")).unwrap();
    runs.resume_matches_straight();

    // Killed while saving its first epoch (its row and checkpoints there, its resume
    // state not yet): that epoch is trained again.
    let settings = tiny_settings(2, 600);
    let (straight, killed) = (root.join("straight-600"), root.join("killed-600"));
    train_straight_and_interrupted(&settings, dataset, &straight, &killed, StopPoint::EndOf(1));
    assert_eq!(read_metrics(&killed).1.len(), 1);
    std::fs::remove_file(killed.join("resume.safetensors")).unwrap();
    run_training(&settings, dataset, &killed, true, false);
    assert_same_run(&straight, &killed);

    // A finished run whose resume state was removed (only an unfinished run needs it) is
    // not started over, even of one epoch: it has nothing to train, and its files stay;
    // without its last model too, it is refused.
    let one_epoch = root.join("one-epoch");
    run_training(&tiny_settings(1, 600), dataset, &one_epoch, false, false);
    std::fs::remove_file(one_epoch.join("resume.safetensors")).unwrap();
    // Every file but the .lock, which holds the PID of the last process that took it.
    let run_files = |dir: &Path| -> std::collections::BTreeMap<std::ffi::OsString, Vec<u8>> {
        (std::fs::read_dir(dir).unwrap())
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_name() != ".lock")
            .map(|entry| (entry.file_name(), std::fs::read(entry.path()).unwrap()))
            .collect()
    };
    let files_before = run_files(&one_epoch);
    let flag = AtomicBool::new(false);
    let resume = || {
        train::train(
            &tiny_settings(1, 600),
            dataset,
            &options(&one_epoch, true, &flag),
        )
    };
    assert!(matches!(resume(), Ok(Outcome::Finished)));
    assert_eq!(run_files(&one_epoch), files_before);
    std::fs::remove_file(one_epoch.join("last_model.safetensors")).unwrap();
    let error = format!("{:#}", resume().err().expect("the resume must be refused"));
    assert_contains(&error, "resume.safetensors is missing");

    // A run that saved more, then lost its resume state and its last model (so that it
    // cannot be told finished), is not started over.
    std::fs::remove_file(killed.join("resume.safetensors")).unwrap();
    std::fs::remove_file(killed.join("last_model.safetensors")).unwrap();
    let best_model = std::fs::read(killed.join("best_model.safetensors")).unwrap();
    let error = refused_resume(&settings, dataset, &killed);
    assert!(
        error.contains("resume.safetensors is missing")
            && error.contains("2 epochs in metrics.csv, best_model.safetensors"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(killed.join("best_model.safetensors")).unwrap(),
        best_model
    );
    assert_eq!(read_metrics(&killed).1.len(), 2);
}

/// A full disk while an epoch's files are written (here resume.safetensors's temporary
/// file leads to /dev/full) stops the run, saying so, that its folder keeps the state it
/// saved last, and how to resume it; once the disk takes files again, the resume is exact.
#[test]
#[cfg(target_os = "linux")]
fn a_full_disk_stops_the_run_and_its_resume_goes_on_exactly() {
    let runs = StraightAndInterrupted::new("full-disk", tiny_settings(3, 600), StopPoint::EndOf(1));
    let run = &runs.interrupted;
    let full_disk = temporary_sibling(&run.join("resume.safetensors"));
    std::os::unix::fs::symlink("/dev/full", &full_disk).unwrap();
    let error = format!(
        "{:#}",
        train::train(
            &runs.settings,
            &runs.dataset,
            &options(run, true, &AtomicBool::new(false)),
        )
        .err()
        .expect("a run on a full disk must stop")
    );
    let run_name = run.display();
    assert!(
        error.starts_with(&format!(
            "cannot write to the run folder {run_name}: the disk is full; free some space on \
             it, then resume the run (--out {run_name} --resume): its folder keeps the state \
             it saved last: cannot write {run_name}/resume.safetensors: "
        )),
        "{error}"
    );
    // The failed write took its temporary file, the link, with it.
    assert!(full_disk.symlink_metadata().is_err());
    runs.resume_matches_straight();
}

/// A fresh run that stopped before its metrics.csv header landed (a full disk) saved
/// nothing: `--resume` starts it from the beginning, as a fresh run there would.
#[test]
fn a_run_stopped_before_its_metrics_header_landed_resumes_from_the_start() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let settings = tiny_settings(1, 600);
    let out = TempDir::new("unwritable-header");
    let blocker = temporary_sibling(&out.join("metrics.csv"));
    std::fs::create_dir_all(&blocker).unwrap();
    let flag = AtomicBool::new(false);
    assert!(train::train(&settings, &dataset, &options(&out, false, &flag)).is_err());
    assert!(out.join("config.json").exists() && !out.join("metrics.csv").exists());
    std::fs::remove_dir(&blocker).unwrap();
    run_training(&settings, &dataset, &out, true, false);
    assert_eq!(read_metrics(&out).1.len(), 1);
}

/// A run killed after it locked its folder but before its config.json landed (a moment
/// at its start, which a SIGKILL may hit) saved nothing: `--resume` starts it over, as
/// the README says, instead of refusing a folder that "holds no vit run" and advising to
/// check --out. Through the library, then the command line (which reads config.json first).
#[test]
fn a_run_killed_before_its_config_landed_resumes_from_the_start() {
    // As such a run leaves its folder: its .lock (a process that has ended) and the
    // temporary file of the config.json it was writing.
    let killed_before_config = |dir: &Path| {
        std::fs::write(dir.join(".lock"), "4294967295").unwrap();
        let partial = dir.join(".config.json.tmp-4294967295");
        std::fs::write(&partial, b"{").unwrap();
        partial
    };
    {
        let _turn = seeded(0);
        let dataset = colour_dataset();
        let settings = tiny_settings(1, 600);
        let out = TempDir::new("killed-before-config");
        let partial = killed_before_config(&out);
        run_training(&settings, &dataset, &out, true, false);
        assert_eq!(read_metrics(&out).1.len(), 1);
        assert!(out.join("resume.safetensors").exists() && !partial.exists());
    }
    let (root, data_dir) = colour_cifar10("killed-before-config-cli");
    let out = root.join("run");
    std::fs::create_dir(&out).unwrap();
    killed_before_config(&out);
    let (data_dir, out_str) = (data_dir.to_str().unwrap(), out.to_str().unwrap());
    let mut args = tiny_run_args(data_dir, out_str);
    args.extend(["--epochs", "1", "--threads", "1", "--resume"]);
    let stderr = String::from_utf8_lossy(&vit(&args).stderr).into_owned();
    assert!(
        stderr
            .contains("stopped before saving anything (before its config.json); starting it over"),
        "{stderr}"
    );
    // Started over, not resumed: no "Resuming RUN at the start of epoch 1" after the note.
    assert!(!stderr.contains("Resuming"), "{stderr}");
    assert!(out.join("config.json").exists());
    assert_eq!(read_metrics(&out).1.len(), 1);
}

#[test]
fn resume_removes_the_temporary_files_of_a_killed_run() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let settings = tiny_settings(2, 600);
    let out = TempDir::new("stale-temporaries");
    run_training(&settings, &dataset, &out, false, true);
    // A process killed mid-write (no process has this pid), a write of this process (it
    // may be in flight), and files of the user's that only look alike: one not numbered,
    // one numbered but not of a file vit writes.
    let stale = out.join(".resume.safetensors.tmp-4294967295");
    let own = temporary_sibling(&out.join("curves.png"));
    let users = out.join(".notes.tmp-draft");
    let users_numbered = out.join(".notes.tmp-4294967295");
    for file in [&stale, &own, &users, &users_numbered] {
        std::fs::write(file, b"partial").unwrap();
    }
    run_training(&settings, &dataset, &out, true, false);
    assert!(!stale.exists());
    assert!(own.exists() && users.exists() && users_numbered.exists());
    assert_eq!(read_metrics(&out).1.len(), 2);

    // The same when a run that stopped before saving anything is started over.
    let failed = TempDir::new("stale-temporaries-start-over");
    let flag = AtomicBool::new(false);
    let too_many = TrainSettings {
        train_subset: Some(dataset.train.len() + 1),
        ..settings.clone()
    };
    assert!(train::train(&too_many, &dataset, &options(&failed, false, &flag)).is_err());
    let stale = failed.join(".config.json.tmp-4294967295");
    std::fs::write(&stale, b"partial").unwrap();
    run_training(&settings, &dataset, &failed, false, false);
    assert!(!stale.exists());
}
