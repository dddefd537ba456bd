//! Ctrl-C and SIGTERM: the run is saved where it stopped and the resume command works.

use crate::common::{assert_contains, send};
use crate::{colour_cifar10, read_metrics, start_training, tiny_run_args, wait_for_first_epoch};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

#[test]
fn ctrl_c_or_sigterm_saves_the_run_and_prints_a_resume_command_that_works() {
    let (root, data_dir) = colour_cifar10("ctrl-c");
    // Ctrl-C, and SIGTERM as a scheduler or `docker stop` sends it. A space, a quote and a
    // byte that is not UTF-8 in a folder's name: the printed command must give them back.
    for (signal, folder) in [("-INT", &b"run 'one' \xff"[..]), ("-TERM", b"run two")] {
        let run = root.join(OsStr::from_bytes(folder));
        let out_placeholder = "OUT";
        let mut args: Vec<OsString> = tiny_run_args(data_dir.to_str().unwrap(), out_placeholder)
            .into_iter()
            .map(|arg| match arg {
                _ if arg == out_placeholder => run.clone().into_os_string(),
                _ => arg.into(),
            })
            .collect();
        #[rustfmt::skip]
        args.extend(["--epochs", "2", "--batch-size", "1", "--warmup-epochs", "1", "--train-subset"].map(OsString::from));
        // 200 steps follow the start, far longer than the signal takes to land. On a
        // machine so busy that the run finished both epochs first, once more with 600
        // images (1,200 steps): the resume runs what is left, so the usual run stays short.
        let output = ["100", "600"]
            .into_iter()
            .find_map(|images| {
                let _ = std::fs::remove_dir_all(&run);
                let args = [&args[..], &[images.into()]].concat();
                let child = start_training(&args, &run);
                send(signal, &child);
                if signal == "-TERM" {
                    // As make passes on a SIGTERM its process group got (and a closing
                    // terminal sends SIGHUP twice): the same signal again, milliseconds
                    // later, still saves.
                    send(signal, &child);
                }
                let output = child.wait_with_output().unwrap();
                let finished = output.status.success()
                    && run.join("metrics.csv").exists()
                    && read_metrics(&run).1.len() == 2;
                (!finished).then_some(output)
            })
            .unwrap_or_else(|| panic!("{signal}: the run finished before the signal came, twice"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "{signal}: {stderr}");
        // A run that stopped has no best epoch of its epochs to tell yet.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!stdout.contains("Best "), "{signal}: {stdout}");
        let command = output
            .stderr
            .split(|&byte| byte == b'\n')
            .find_map(|line| line.strip_prefix(b"Resume with: "))
            .unwrap_or_else(|| panic!("{signal}: no resume command in {stderr}"));
        assert!(run.join("resume.safetensors").exists());
        let command = OsStr::from_bytes(command);
        let resumed = Command::new("sh").arg("-c").arg(command).output().unwrap();
        let resumed_stderr = String::from_utf8_lossy(&resumed.stderr);
        assert!(resumed.status.success(), "{command:?}: {resumed_stderr}");
        // Where it goes on from, as the interrupt said.
        let place = stderr
            .split_once("Interrupted ")
            .and_then(|(_, rest)| rest.split_once(';'))
            .map(|(place, _)| place)
            .unwrap_or_else(|| panic!("{signal}: {stderr}"));
        let expected = match place.strip_prefix("at the end of epoch ") {
            Some(epoch) => format!(
                "at the start of epoch {}",
                epoch.parse::<usize>().unwrap() + 1
            ),
            None => place.to_string(),
        };
        assert!(
            resumed_stderr.contains(&format!("{expected} (of 2)")),
            "{place}: {resumed_stderr}"
        );
        assert_eq!(read_metrics(&run).1.len(), 2);
    }
}

/// Ctrl-C, SIGTERM and SIGHUP reach a training run on the signal handler's thread alone:
/// every other thread (the one that trains, and libtorch's) blocks them. Delivered to the
/// training thread mid-step, a SIGTERM crashed the run (heap corruption in oneDNN's
/// kernels, about one stop in three) instead of saving it.
#[test]
fn interrupts_are_taken_by_the_handler_thread_alone() {
    let (root, data_dir) = colour_cifar10("signal-mask");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    #[rustfmt::skip]
    args.extend(["--epochs", "50", "--batch-size", "1", "--train-subset", "100", "--threads", "2"]);
    let mut child = start_training(&args, &run);
    // An epoch in, so that libtorch's threads are there too.
    wait_for_first_epoch(&run);
    // SIGHUP, SIGINT and SIGTERM (1, 2, 15) in the hexadecimal masks of /proc's status.
    let interrupts: u64 = (1 << 0) | (1 << 1) | (1 << 14);
    let tasks = Path::new("/proc").join(child.id().to_string()).join("task");
    let blocked: Vec<(String, bool)> = std::fs::read_dir(&tasks)
        .unwrap()
        .filter_map(|task| {
            let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
            let field = |name: &str| {
                let line = status.lines().find(|line| line.starts_with(name)).unwrap();
                line.split_whitespace().nth(1).unwrap().to_string()
            };
            let mask = u64::from_str_radix(&field("SigBlk:"), 16).unwrap();
            Some((field("Name:"), mask & interrupts == interrupts))
        })
        .collect();
    child.kill().unwrap();
    let _ = child.wait();
    let unblocked = blocked.iter().filter(|(_, blocked)| !blocked).count();
    assert!(
        unblocked == 1 && blocked.len() > 2,
        "threads and whether they block the interrupts: {blocked:?}"
    );
}

/// With one step per epoch, Ctrl-C always lands at an epoch's end, whose row and
/// checkpoints are saved: the report says so rather than "after step 1 of epoch N".
#[test]
fn ctrl_c_at_the_end_of_an_epoch_says_so() {
    let (root, data_dir) = colour_cifar10("ctrl-c-end");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    #[rustfmt::skip]
    args.extend(["--epochs", "100", "--batch-size", "64", "--train-subset", "64", "--warmup-epochs", "1"]);
    let child = start_training(&args, &run);
    send("-INT", &child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let epoch: usize = stderr
        .split_once("Interrupted at the end of epoch ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .and_then(|(epoch, _)| epoch.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(read_metrics(&run).1.len(), epoch);
}

/// A second Ctrl-C quits at once with status 130, whatever the step is doing, saying the
/// command that resumes the run. (It ran exit handlers once, which tore libtorch down
/// under the running step: most such runs died of a segmentation fault or heap corruption
/// instead.) The second comes 0.7 s after the first (a repeat within half a second is the
/// first delivered twice), inside the first step of the notebook-size model at batch 256
/// on one thread, which takes seconds. Three tries, as the crash was a race; at least one
/// must have quit at once rather than after saving.
#[test]
fn a_second_ctrl_c_quits_at_once() {
    let (root, data_dir) = colour_cifar10("ctrl-c-twice");
    let mut quit_at_once = 0;
    for attempt in 0..3 {
        let run = root.join(format!("run-{attempt}"));
        #[rustfmt::skip]
        let args = [
            "train", "--dataset", "cifar10", "--data-dir", data_dir.to_str().unwrap(),
            "--out", run.to_str().unwrap(), "--device", "cpu", "--config", "notebook",
            "--epochs", "2", "--batch-size", "256", "--warmup-epochs", "1", "--threads", "1",
        ];
        let child = start_training(&args, &run);
        for pause_ms in [0, 700] {
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
            send("-INT", &child);
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "try {attempt}: {stderr}");
        assert_contains(
            &stderr,
            "a second Ctrl-C (or signal), half a second or more later, quits",
        );
        assert!(!stderr.contains("Error"), "{stderr}");
        if !stderr.contains("the state is saved in") {
            quit_at_once += 1;
            assert_contains(
                &stderr,
                "Quit at once, without saving: the run folder keeps the state",
            );
            // With the command that resumes it.
            let resume = format!(" --out {} --resume\n", run.display());
            assert!(
                stderr.contains("resume with: ") && stderr.contains(&resume),
                "{stderr}"
            );
        }
    }
    assert!(
        quit_at_once > 0,
        "every try saved: the second Ctrl-C was not seen"
    );
}
