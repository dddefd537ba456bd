//! The Makefile's targets as a user runs them.

use crate::common::{assert_contains, TempDir};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// `make`, run in `dir` as a make of its own: not as a sub-make of `make test`, which
/// would print "Entering directory".
fn make_in(dir: &Path) -> Command {
    let mut make = Command::new("make");
    make.current_dir(dir)
        .env_remove("MAKELEVEL")
        .env_remove("MAKEFLAGS");
    make
}

/// `make train ARGS="--dataset cifar10"` would download CIFAR-100 and then have `vit train`
/// refuse the flag given twice; make refuses it first, before installing or building
/// anything, and says to use DATASET= (`make -n`: nothing is run either way).
#[test]
fn make_train_refuses_dataset_flags_in_args() {
    let make = |args: &[&str]| {
        make_in(Path::new(env!("CARGO_MANIFEST_DIR")))
            .args(args)
            // The defaults, whatever the environment sets.
            .env_remove("DATASET")
            .env_remove("DATA_DIR")
            .output()
            .expect("make runs")
    };
    let plan = |args: &str| make(&["-n", "train", &format!("ARGS={args}")]);
    for args in ["--dataset cifar10", "--epochs 2 --data-dir=/tmp/data"] {
        let output = plan(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args}");
        assert_contains(&stderr, "pass DATASET=... or DATA_DIR=...");
        assert!(output.stdout.is_empty(), "{args}: make planned commands");
    }
    let output = plan("--epochs 2");
    assert!(output.status.success());
    let planned = String::from_utf8_lossy(&output.stdout);
    assert!(planned.contains("train --dataset 'cifar100' --data-dir 'data' --epochs 2"));

    // A DATA_DIR with a space and a quote reaches vit as one argument (here printf, in
    // vit's place; `-o build` builds nothing).
    let output = make(&[
        "-o",
        "build",
        "train",
        "VIT=printf '[%s]'",
        "DATA_DIR=bob's da ta",
    ]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("[download][--dataset][cifar100][--data-dir][bob's da ta]")
            && printed.contains("[train][--dataset][cifar100][--data-dir][bob's da ta]"),
        "{printed}"
    );

    // A DATASET make train does not take is refused before anything runs; a vit that fails
    // is followed by what its two data flags are under make (`false` in vit's place).
    let output = make(&["-n", "train", "DATASET=imagenet"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && output.stdout.is_empty());
    assert_contains(
        &stderr,
        "DATASET=imagenet: make train takes DATASET=cifar10, cifar100 or folder",
    );
    // `ARGS=--help` shows train's flags: nothing is downloaded for it.
    let output = make(&["-o", "build", "train", "VIT=printf '[%s]'", "ARGS=--help"]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        !printed.contains("[download]")
            && printed.contains("[train]")
            && printed.contains("[--help]"),
        "{printed}"
    );
    let output = make(&["-o", "build", "train", "VIT=false"]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    // The hint's line (make also echoes the recipe, which holds its text).
    let hint = "make train: where the error above says --dataset or --data-dir, pass \
                DATASET=... or DATA_DIR=... to make";
    let hinted = |printed: &str| printed.lines().any(|line| line == hint);
    assert!(hinted(&printed), "{printed}");
    // Not after a stop (a vit that ends with status 130, as after Ctrl-C or SIGTERM).
    let output = make(&["-o", "build", "train", "VIT=sh -c 'exit 130'"]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.code() == Some(2) && !hinted(&printed),
        "{printed}"
    );
}

/// `make clean` removes the build (cargo's, here a stand-in that only logs) and make
/// device's copies of it, and a venv, never what a user keeps: data, run folders, or a
/// `.venv` that is not a venv (the Makefile run in a folder of its own).
#[test]
fn make_clean_removes_builds_and_only_a_real_venv() {
    let root = TempDir::new("make-clean");
    let project = root.join("project");
    let bin = root.join("bin");
    for folder in [
        ".device/tests",
        ".venv",
        "data/cifar-10-batches-bin",
        "runs/a",
    ] {
        std::fs::create_dir_all(project.join(folder)).unwrap();
    }
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Makefile"),
        project.join("Makefile"),
    )
    .unwrap();
    std::fs::write(project.join(".device/vit"), "a copy").unwrap();
    std::fs::write(
        project.join("data/cifar-10-batches-bin/data_batch_1.bin"),
        "x",
    )
    .unwrap();
    std::fs::write(project.join("runs/a/metrics.csv"), "epoch\n").unwrap();
    std::fs::write(project.join(".venv/mine.txt"), "not a venv").unwrap();
    let log = root.join("cargo.log");
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&cargo, executable).unwrap();
    let clean = || {
        let mut path = OsString::from(&bin);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let output = make_in(&project)
            .arg("clean")
            .env("PATH", path)
            .output()
            .expect("make runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let printed = clean();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "clean\n");
    assert!(
        !project.join(".device").exists(),
        "make device's copies are left"
    );
    assert_contains(&printed, ".venv is not a Python venv");
    for kept in [
        ".venv/mine.txt",
        "data/cifar-10-batches-bin/data_batch_1.bin",
        "runs/a/metrics.csv",
    ] {
        assert!(project.join(kept).is_file(), "{kept} was removed");
    }

    // A venv make set up is removed.
    std::fs::write(project.join(".venv/pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    clean();
    assert!(!project.join(".venv").exists());
    assert!(project
        .join("data/cifar-10-batches-bin/data_batch_1.bin")
        .is_file());
}
