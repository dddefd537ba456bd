//! The run folder: nothing of the user's is overwritten, and a file that cannot be written
//! (a pipe, a full disk, a removed folder, a closed stdout) stops the run with its name.

use crate::common::{assert_contains, seeded, vit, vit_fails, TempDir};
use crate::{
    colour_cifar10, colour_dataset, common, options, read_metrics, save_fresh_model,
    start_training, tiny_run_args, tiny_settings, wait_for_first_epoch,
};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use vit_tch::fsutil::{temporary_sibling, BackgroundWrites};
use vit_tch::model::ViTConfig;
use vit_tch::train::{self, RunOptions, TrainSettings};

#[test]
fn runs_without_out_get_a_folder_each() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let settings = tiny_settings(1, 600);
    let root = TempDir::new("numbered");
    // As if taken by a run started in the same second.
    let base = root.join("runs/20261129-120000");
    std::fs::create_dir_all(&base).unwrap();
    let flag = AtomicBool::new(false);
    let options = RunOptions {
        numbered_out: true,
        ..options(&base, false, &flag)
    };
    train::train(&settings, &dataset, &options).unwrap();
    train::train(&settings, &dataset, &options).unwrap();
    assert_eq!(
        std::fs::read_dir(&base).unwrap().count(),
        0,
        "the taken folder is untouched"
    );
    for dir in ["20261129-120000-2", "20261129-120000-3"] {
        assert_eq!(read_metrics(&root.join("runs").join(dir)).1.len(), 1);
    }
}

/// Without --out, the confusion matrix goes beside the checkpoint: a file of the user's at
/// its name is kept, and the evaluation refused before its test pass with the advice to
/// pass --out (there is no --out to choose another of, nor a PNG to name with -o). A file
/// there that cannot be checked (a link that loops) is refused with the same advice.
#[test]
fn a_users_file_beside_the_checkpoint_is_kept_and_out_is_advised() {
    let (root, data_dir) = colour_cifar10("eval-beside-checkpoint");
    let model = root.join("model.safetensors");
    save_fresh_model(&ViTConfig::tiny(), &[("dataset", "cifar10".into())], &model);
    #[rustfmt::skip]
    let eval = ["eval", "--checkpoint", model.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap(), "--device", "cpu"];
    let csv = root.join("model.confusion_matrix.csv");
    let what = "a confusion matrix vit wrote";
    let advice = "pass --out DIR to write the evaluation's files elsewhere";
    // The second begins as vit's matrices do, but is not one of them.
    for users in ["my notes\n", "true\\predicted,a,b\nmine,1,2\n"] {
        std::fs::write(&csv, users).unwrap();
        let output = common::run_vit(&eval);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{} is already there, and is not {what}: vit eval would replace it with the \
                 confusion matrix. Move that file away, or {advice}\n",
                csv.display()
            )),
            "{stderr}"
        );
        assert!(output.stdout.is_empty(), "{stderr}");
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), users);
    }
    std::fs::remove_file(&csv).unwrap();
    // A link to itself: opening it fails with another error than "not found".
    std::os::unix::fs::symlink(&csv, &csv).unwrap();
    let stderr = vit_fails(&eval);
    assert!(
        stderr.contains(&format!(
            "cannot check whether {} is {what} (",
            csv.display()
        )) && stderr.contains(&format!("Move it away, or {advice}\n")),
        "{stderr}"
    );
    assert!(csv.is_symlink());
}

/// A resume.safetensors that is a named pipe (whose open would wait for a writer forever)
/// holds no state: a resume is refused at once, saying so, and a fresh run there is refused
/// at once too, as over any run with results.
#[test]
fn a_resume_state_that_is_a_pipe_is_refused_at_once() {
    let (root, data_dir) = colour_cifar10("pipe-state");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    args.extend([
        "--epochs",
        "2",
        "--batch-size",
        "100",
        "--warmup-epochs",
        "1",
    ]);
    args.extend(["--train-subset", "100"]);
    vit(&args);
    std::fs::remove_file(run.join("resume.safetensors")).unwrap();
    let made = Command::new("mkfifo")
        .arg(run.join("resume.safetensors"))
        .status()
        .unwrap();
    assert!(made.success());
    let resumed = common::run_vit_bounded(&[&args[..], &["--resume"]].concat());
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(1), "{stderr}");
    assert_contains(
        &stderr,
        "resume.safetensors is a named pipe (FIFO), not the file the run wrote",
    );
    let fresh = common::run_vit_bounded(&args);
    let stderr = String::from_utf8_lossy(&fresh.stderr);
    assert_eq!(fresh.status.code(), Some(1), "{stderr}");
    assert_contains(&stderr, "choose another --out");
}

/// A config.json or metrics.csv that is a named pipe (whose read would wait for a writer
/// forever) is not the run's: a resume is refused at once, naming it (with the run's
/// resume state, and without, where the metrics are counted first), and so is a fresh run
/// there.
#[test]
fn a_config_or_metrics_file_that_is_a_pipe_is_refused_at_once() {
    let (root, data_dir) = colour_cifar10("pipe-run-files");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    #[rustfmt::skip]
    args.extend(["--epochs", "2", "--batch-size", "100", "--warmup-epochs", "1", "--train-subset", "100"]);
    vit(&args);
    let resume = [&args[..], &["--resume"]].concat();
    let refused = |args: &[&str], message: &str| {
        let output = common::run_vit_bounded(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_contains(&stderr, message);
        stderr.into_owned()
    };
    let not_the_runs = |name: &str| {
        format!(
            "cannot resume: {} is a named pipe (FIFO), not the file the run wrote; put back \
             the run's own, or start a new run with another --out",
            run.join(name).display()
        )
    };
    for name in ["config.json", "metrics.csv"] {
        let (file, kept) = (run.join(name), root.join(name));
        std::fs::rename(&file, &kept).unwrap();
        let made = Command::new("mkfifo").arg(&file).status().unwrap();
        assert!(made.success());
        refused(&resume, &not_the_runs(name));
        if name == "config.json" {
            refused(
                &args,
                "and is not a vit run folder: a run there could write over them; choose \
                 another --out",
            );
        } else {
            let state = run.join("resume.safetensors");
            std::fs::rename(&state, root.join("resume.safetensors")).unwrap();
            let stderr = refused(&resume, &not_the_runs(name));
            assert!(!stderr.contains("training that epoch again"), "{stderr}");
            refused(&args, "already holds a run; pass --resume to continue it");
            std::fs::rename(root.join("resume.safetensors"), &state).unwrap();
        }
        std::fs::remove_file(&file).unwrap();
        std::fs::rename(&kept, &file).unwrap();
    }
    // Put back, the run's files resume it (finished: nothing more to train).
    vit(&resume);
}

/// A `.lock` in `--out` that vit did not make (vit's hold a process ID) is the user's: the
/// run is refused and the file left as it was, whether the folder holds nothing else or
/// also a file the run is refused for; a named pipe there is refused without waiting, and
/// a folder as the user's too.
#[test]
fn a_lock_file_of_the_users_is_kept() {
    use std::os::unix::fs::FileTypeExt;
    let (root, data_dir) = colour_cifar10("users-lock");
    let data = data_dir.to_str().unwrap();
    let contents: [&[u8]; 2] = [b"my important lock data\n", b"\xff\xfe 12"];
    for (case, content) in contents.iter().enumerate() {
        let out = root.join(format!("out-{case}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(".lock"), content).unwrap();
        let mut args = tiny_run_args(data, out.to_str().unwrap());
        args.extend(["--epochs", "1", "--batch-size", "100"]);
        let stderr = vit_fails(&args);
        assert!(
            stderr.contains(&format!(
                "{} is already there, and is not a lock vit made (those are files that hold a \
                 process ID): a run in {} would replace it. Move it away\n",
                out.join(".lock").display(),
                out.display()
            )),
            "{stderr}"
        );
        assert_eq!(std::fs::read(out.join(".lock")).unwrap(), *content);
        // With a config.json that is not a vit run's beside it.
        std::fs::write(out.join("config.json"), r#"{"mine": 1}"#).unwrap();
        vit_fails(&args);
        assert_eq!(std::fs::read(out.join(".lock")).unwrap(), *content);
        assert_eq!(
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            r#"{"mine": 1}"#
        );
    }
    // A named pipe: refused at once (reading it would wait for a writer forever).
    let out = root.join("out-pipe");
    std::fs::create_dir_all(&out).unwrap();
    let made = Command::new("mkfifo")
        .arg(out.join(".lock"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut args = tiny_run_args(data, out.to_str().unwrap());
    args.extend(["--epochs", "1", "--batch-size", "100"]);
    let stderr = vit_fails(&args);
    assert_contains(&stderr, "is not a lock vit made");
    assert!(std::fs::symlink_metadata(out.join(".lock"))
        .unwrap()
        .file_type()
        .is_fifo());
    // A folder, with something in it.
    let out = root.join("out-folder");
    std::fs::create_dir_all(out.join(".lock")).unwrap();
    std::fs::write(out.join(".lock/notes"), "mine").unwrap();
    let mut args = tiny_run_args(data, out.to_str().unwrap());
    args.extend(["--epochs", "1", "--batch-size", "100"]);
    let stderr = vit_fails(&args);
    assert_contains(&stderr, "is not a lock vit made");
    assert_eq!(
        std::fs::read_to_string(out.join(".lock/notes")).unwrap(),
        "mine"
    );
}

/// Runs `vit ARGS` with its stdout a pipe already closed (`vit info | head -1` once head
/// has gone): the read end is closed before vit starts, so its first write fails.
fn vit_into_a_closed_pipe(args: &[&str]) -> std::process::Output {
    let (read, write) = std::io::pipe().unwrap();
    drop(read);
    Command::new(common::vit_binary())
        .args(args)
        .stdout(write)
        .output()
        .unwrap()
}

/// A closed pipe ends a command that only reports quietly, by SIGPIPE as other tools end
/// (not with a panic, "failed printing to stdout: Broken pipe"), but not a training run,
/// which trains and saves on without its epoch lines.
#[test]
fn a_closed_pipe_ends_a_report_quietly_but_not_a_training_run() {
    use std::os::unix::process::ExitStatusExt;
    let output = vit_into_a_closed_pipe(&["info"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert_eq!(stderr, "");

    let (root, data_dir) = colour_cifar10("closed-pipe");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    args.extend(["--epochs", "2", "--warmup-epochs", "1"]);
    let output = vit_into_a_closed_pipe(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert_eq!(read_metrics(&run).1.len(), 2);
}

/// A live run's folder removed, and a new run started at the same --out: the first run
/// stops at its next epoch's end, saying that its folder was removed, and writes nothing
/// into the new run's folder, whose metrics.csv holds that run's rows alone.
#[test]
fn a_run_whose_folder_is_removed_stops_and_leaves_the_next_run_there_alone() {
    let (root, data_dir) = colour_cifar10("removed-folder");
    let run = root.join("run");
    let (data, out) = (data_dir.to_str().unwrap(), run.to_str().unwrap());
    let mut args = tiny_run_args(data, out);
    args.extend(["--epochs", "300", "--warmup-epochs", "1"]);
    let first = start_training(&args, &run);
    wait_for_first_epoch(&run);
    let started = std::time::Instant::now();
    // A file of the run may land in the folder as it goes: removed until it is gone.
    while std::fs::remove_dir_all(&run).is_err() {
        assert!(run.exists() && started.elapsed().as_secs() < 60);
    }
    let mut args = tiny_run_args(data, out);
    args.extend(["--epochs", "2", "--warmup-epochs", "1"]);
    vit(&args);
    let first = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    // The removal unlinks the folder's files before the folder (and starts again where a
    // file of the run landed meanwhile): the run may look in between, and see the folder
    // without its .lock.
    let said = |what: &str| stderr.contains(&format!("{out}{what} was removed"));
    assert!(
        !first.status.success() && (said("") || said("/.lock")),
        "{stderr}"
    );
    let epochs: Vec<String> = read_metrics(&run)
        .1
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(epochs, ["1", "2"]);
}

#[test]
fn background_writes_land_in_order_and_report_errors() {
    let dir = TempDir::new("background-writes");
    let mut writes = BackgroundWrites::default();
    let model = dir.join("model.safetensors");
    writes
        .start(vec![(model.clone(), b"first".to_vec())])
        .unwrap();
    // The second batch rewrites the same file: it must win, whatever the timing.
    let second = vec![
        (dir.join("a"), b"a".to_vec()),
        (model.clone(), b"second".to_vec()),
    ];
    writes.start(second).unwrap();
    writes.finish().unwrap();
    assert_eq!(std::fs::read(&model).unwrap(), b"second");
    assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"a");

    // A failed write is reported, naming the file, by `check` once the batch is over (the
    // training loop asks every step), by the next `start` (which then writes nothing) and
    // by `finish`; the files after it in its batch are not written, and no temporary file
    // is left behind.
    let unwritable = dir.join("no-such-folder").join("x");
    let failing = || vec![(unwritable.clone(), vec![1]), (dir.join("b"), vec![2])];
    let names_the_file = |error: anyhow::Error| {
        let error = format!("{error:#}");
        assert_contains(&error, &unwritable.display().to_string());
    };
    writes.start(failing()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let error = loop {
        match writes.check() {
            Err(error) => break error,
            Ok(()) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            Ok(()) => panic!("check() never reported the failed write"),
        }
    };
    names_the_file(error);
    writes.start(failing()).unwrap();
    names_the_file(writes.start(vec![(dir.join("c"), vec![3])]).unwrap_err());
    writes.start(failing()).unwrap();
    names_the_file(writes.finish().unwrap_err());
    let mut names: Vec<_> = std::fs::read_dir(&*dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "model.safetensors"]);
    writes.finish().unwrap();
    writes.check().unwrap();

    // Dropping the writer (an early return elsewhere) waits for the batch in flight.
    writes
        .start(vec![(dir.join("d"), vec![7; 1 << 24])])
        .unwrap();
    drop(writes);
    assert_eq!(std::fs::read(dir.join("d")).unwrap().len(), 1 << 24);
}

/// Writes checked before each file (that the run folder is still there) stop where the
/// check fails: its error is reported, and the files from there on are not written.
#[test]
fn checked_background_writes_stop_where_the_check_fails() {
    let dir = TempDir::new("checked-writes");
    let checks = std::sync::atomic::AtomicUsize::new(0);
    let mut writes = BackgroundWrites::checked_by(move || {
        match checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!("the run folder was removed")),
        }
    });
    let files = ["a", "b"].map(|name| (dir.join(name), name.as_bytes().to_vec()));
    writes.start(files.to_vec()).unwrap();
    let error = format!("{:#}", writes.finish().unwrap_err());
    assert_eq!(error, "the run folder was removed");
    assert!(dir.join("a").exists() && !dir.join("b").exists());
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_run_with_its_name() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    // Trains into a new folder where `name`'s temporary file is a folder, so that writing
    // `name` fails; the run's error message.
    let run_with_unwritable = |name: &str, settings: &TrainSettings| {
        let out = TempDir::new("unwritable-checkpoint");
        std::fs::create_dir_all(temporary_sibling(&out.join(name))).unwrap();
        let flag = AtomicBool::new(false);
        let result = train::train(settings, &dataset, &options(&out, false, &flag));
        let error = format!("{:#}", result.err().expect("the run must fail"));
        assert!(
            error.contains("cannot write") && error.contains(name),
            "{error}"
        );
        out
    };
    // The run's last batch of files: the error comes when vit waits for them at the end.
    // The files before it in the batch landed; the resume state after it did not.
    let out = run_with_unwritable("last_model.safetensors", &tiny_settings(1, 600));
    assert!(vit_tch::checkpoint::TensorFile::read(&out.join("best_model.safetensors")).is_ok());
    assert!(!out.join("resume.safetensors").exists());
    // Epoch 1's files (best_model first) while epoch 2's 600 steps run: the run stops
    // during epoch 2, without writing its metrics row.
    let out = run_with_unwritable("best_model.safetensors", &tiny_settings(2, 1));
    assert_eq!(read_metrics(&out).1.len(), 1);
    assert!(!out.join("last_model.safetensors").exists());
}

/// A fresh run's first files, config.json and metrics.csv's header, that cannot be written
/// name the run folder, with the reason where the OS gives one (a full disk, say).
#[test]
fn a_fresh_runs_first_files_that_cannot_be_written_name_the_run_folder() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    for name in ["config.json", "metrics.csv"] {
        let out = TempDir::new("unwritable-start");
        std::fs::create_dir_all(temporary_sibling(&out.join(name))).unwrap();
        let flag = AtomicBool::new(false);
        let result = train::train(
            &tiny_settings(1, 600),
            &dataset,
            &options(&out, false, &flag),
        );
        let error = format!("{:#}", result.err().expect("the run must fail"));
        let expected = format!("cannot write to the run folder {}", out.display());
        assert!(error.contains(&expected), "{name}: {error}");
    }
}

/// A write to stdout that fails (`vit eval --json > results.json` on a full disk) is an
/// error of one line and status 1, as any other, not a panic ("failed printing to stdout").
#[test]
fn a_failed_write_to_stdout_is_an_error_not_a_panic() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let output = Command::new(common::vit_binary())
        .args(["info", "--config", "tiny"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "Error: cannot write to standard output: No space left on device (os error 28)"
    );
}
