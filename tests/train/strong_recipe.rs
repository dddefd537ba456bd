//! The strong recipe: its EMA warm-up step for step as timm's, a run of it from the command
//! line and its closing lines, and its MixUp/CutMix switch-off.

use crate::common::{assert_contains, seeded, vit, vit_fails, TempDir};
use crate::{
    colour_cifar10, colour_dataset, common, read_metrics, run_training, summary_line,
    tiny_run_args, tiny_settings,
};
use std::path::Path;
use vit_tch::checkpoint::TensorFile;
use vit_tch::train::{self, Outcome, Regularization, StopPoint};

/// `--ema-warmup`'s decay is timm's `ModelEmaV3.get_decay` with `use_warmup=True`, step
/// for step; in a run, the first update copies the weights, and the second (in the next
/// epoch, after a resume) takes the decay of the run's step 2.
#[test]
fn ema_warmup_follows_timm() {
    let steps = [1usize, 2, 3, 10, 100, 1_000, 31_623, 100_000];
    let code = format!(
        "import torch\nfrom timm.utils.model_ema import ModelEmaV3\n\
         ema = ModelEmaV3(torch.nn.Linear(1, 1), decay=0.999, use_warmup=True)\n\
         print(' '.join(repr(ema.get_decay(step)) for step in {steps:?}))"
    );
    let timm: Vec<f64> = common::run_python(Path::new("."), &code)
        .split_whitespace()
        .map(|value| value.parse().unwrap())
        .collect();
    assert_eq!(timm.len(), steps.len());
    for (step, expected) in steps.iter().zip(timm) {
        let decay = train::ema_decay(0.999, *step, true);
        assert!(
            (decay - expected).abs() < 1e-12,
            "step {step}: {decay} vs timm {expected}"
        );
        assert_eq!(train::ema_decay(0.999, *step, false), 0.999);
    }

    let _turn = seeded(0);
    let dataset = colour_dataset();
    // One step an epoch; the run stops at the end of the first.
    let mut settings = tiny_settings(2, 600);
    settings.regularization = Regularization {
        ema: Some(0.999),
        ema_warmup: true,
        ..Regularization::default()
    };
    let root = TempDir::new("ema-warmup");
    let run = root.join("run");
    let read = |name: &str| {
        vit_tch::checkpoint::TensorFile::read(&run.join(name))
            .unwrap()
            .tensors
    };
    let first = run_training(&settings, &dataset, &run, false, true);
    assert!(matches!(
        first,
        Outcome::Interrupted {
            at: StopPoint::EndOf(1),
            ..
        }
    ));
    let (ema_1, weights_1) = (
        read("last_ema_model.safetensors"),
        read("last_model.safetensors"),
    );
    for (name, weights) in &weights_1 {
        common::assert_close(name, &ema_1[name], weights, 1e-6);
    }
    run_training(&settings, &dataset, &run, true, false);
    let (ema_2, weights_2) = (
        read("last_ema_model.safetensors"),
        read("last_model.safetensors"),
    );
    let decay = train::ema_decay(0.999, 2, true);
    for (name, weights) in &weights_2 {
        let expected = &weights_1[name] + (weights - &weights_1[name]) * (1.0 - decay);
        common::assert_close(name, &ema_2[name], &expected, 1e-6);
    }
}

#[test]
fn strong_recipe_runs_from_the_command_line() {
    let (root, data_dir) = colour_cifar10("strong-cli");
    let run = root.join("run");
    let (data, out) = (data_dir.to_str().unwrap(), run.to_str().unwrap());
    let mut args = tiny_run_args(data, out);
    args.extend(["--recipe", "strong", "--epochs", "1", "--batch-size", "100"]);
    // A probability may be 1, as in torchvision's RandomErasing.
    args.extend(["--random-erasing", "1"]);
    // In bf16 autocast, as on a GPU: the CPU runs the same autocast machinery.
    args.extend(["--precision", "bf16", "--eval-precision", "bf16"]);
    let output = vit(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Where the CPU has no bf16 instructions, the user is told that bf16 crawls there, in
    // one line for both flags.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = "warning: --precision bf16 and --eval-precision bf16 on a CPU without \
                   AVX-512 BF16 instructions";
    let warned = stderr.contains(warning) && stderr.contains("leave them out to run in fp32");
    assert_eq!(warned, common::cpu_lacks_bf16(), "{stderr}");
    assert_eq!(
        stderr.matches("AVX-512").count(),
        usize::from(warned),
        "{stderr}"
    );
    assert!(
        stdout.contains("Epoch: 1, Validation Accuracy:") && stdout.contains("EMA acc"),
        "{stdout}"
    );
    // The EMA's accuracy on the epoch line is metrics.csv's ema_test_acc, as a percentage
    // like the model's own.
    let (header, rows) = read_metrics(&run);
    let column = header
        .iter()
        .position(|name| name == "ema_test_acc")
        .unwrap();
    let ema_acc: f64 = rows[0][column].parse().unwrap();
    let expected = format!(", EMA acc {:.2}%, lr ", 100.0 * ema_acc);
    assert!(stdout.contains(&expected), "{expected:?} not in {stdout}");
    // It ends with the best model and the best EMA model.
    let (best_model, best_ema_model) = (
        run.join("best_model.safetensors"),
        run.join("best_ema_model.safetensors"),
    );
    let test_acc: f64 = rows[0][5].parse().unwrap();
    let model_summary = summary_line("", test_acc, (1, 1), &best_model);
    let summary = summary_line("EMA ", ema_acc, (1, 1), &best_ema_model);
    assert!(
        stdout.ends_with(&(model_summary + &summary)),
        "{summary:?} does not end {stdout}"
    );
    // One epoch with the default 5 warm-up epochs: it runs, and says what that means.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_contains(
        &stderr,
        "warning: --warmup-epochs 5 is not below --epochs 1",
    );
    // Resumed once finished, it trains nothing, and warns of nothing it would train.
    let mut resume = args.clone();
    resume.push("--resume");
    let output = vit(&resume);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains("nothing to train")
            && !stderr.contains("--warmup-epochs")
            && !stderr.contains("Training ")
            && !stderr.contains("Resuming "),
        "{stderr}"
    );
    // ... and says again how it ended, from its saved state: not from metrics.csv, which
    // an edit may have changed, and naming a best model moved away.
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        stdout.ends_with(&summary),
        "{summary:?} does not end {stdout}"
    );
    let mut edited = rows.clone();
    (edited[0][5], edited[0][column]) = ("0.99".into(), "0.98".into());
    let mut writer = csv::Writer::from_path(run.join("metrics.csv")).unwrap();
    for record in std::iter::once(&header).chain(&edited) {
        writer.write_record(record).unwrap();
    }
    writer.flush().unwrap();
    std::fs::remove_file(&best_model).unwrap();
    let stdout = String::from_utf8_lossy(&vit(&resume).stdout).into_owned();
    let model_summary = format!(
        "Best Validation Accuracy: {:.2}% (epoch 1 of 1), {} is no longer there\n",
        100.0 * test_acc,
        best_model.display()
    );
    assert!(
        stdout.ends_with(&(model_summary + &summary)),
        "{summary:?} does not end {stdout}"
    );
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    for setting in [
        "AutoAugmentCifar10",
        "\"drop_path\": 0.1",
        "\"cutmix_alpha\": 1.0",
        "\"ema\": 0.999",
        "\"dropout\": 0.0",
        "\"precision\": \"bf16\"",
        "\"p\": 1.0",
    ] {
        assert!(config.contains(setting), "{setting} not in {config}");
    }
}

/// A finished run names the best epoch of its model and, apart, that of its EMA, each by
/// the rule that keeps the best checkpoint (the first epoch with the highest accuracy);
/// a run whose saved state has no best epoch (saved by a version before the epochs were
/// recorded) leaves the epoch out. Its opening line gives the batch the steps take: the
/// training images, when they are fewer than `--batch-size` (one is "1 ... training
/// image").
#[test]
fn the_closing_lines_name_the_best_epochs_of_the_model_and_of_its_ema() {
    let (root, data_dir) = colour_cifar10("best-epochs");
    let run = root.join("run");
    let mut args = tiny_run_args(data_dir.to_str().unwrap(), run.to_str().unwrap());
    // A slow EMA (0.999 over 36 steps) stays near the first weights while the model learns:
    // the two peak in different epochs.
    #[rustfmt::skip]
    args.extend(["--epochs", "3", "--batch-size", "50", "--warmup-epochs", "1", "--ema", "0.999"]);
    let stdout = String::from_utf8_lossy(&vit(&args).stdout).into_owned();
    let (header, rows) = read_metrics(&run);
    let first_best = |name: &str| {
        let column = header.iter().position(|c| c == name).unwrap();
        let accuracies: Vec<f64> = rows.iter().map(|r| r[column].parse().unwrap()).collect();
        common::first_best(&accuracies)
    };
    let ((model_acc, model_epoch), (ema_acc, ema_epoch)) =
        (first_best("test_acc"), first_best("ema_test_acc"));
    assert_ne!(
        model_epoch, ema_epoch,
        "the test needs a run whose model and EMA peak in different epochs: {rows:?}"
    );
    let (best_model, best_ema_model) = (
        run.join("best_model.safetensors"),
        run.join("best_ema_model.safetensors"),
    );
    let lines = summary_line("", model_acc, (model_epoch, 3), &best_model)
        + &summary_line("EMA ", ema_acc, (ema_epoch, 3), &best_ema_model);
    assert!(stdout.ends_with(&lines), "{lines:?} does not end {stdout}");

    // The state of an earlier version: no best epochs recorded.
    let state_path = run.join("resume.safetensors");
    let mut state = TensorFile::read(&state_path).unwrap();
    let mut progress: serde_json::Value =
        serde_json::from_str(&state.metadata["progress"]).unwrap();
    for key in ["best_epoch", "best_ema_epoch"] {
        assert!(
            progress.as_object_mut().unwrap().remove(key).is_some(),
            "{key}"
        );
    }
    state
        .metadata
        .insert("progress".into(), progress.to_string());
    std::fs::write(&state_path, state.to_bytes().unwrap()).unwrap();
    args.push("--resume");
    let stdout = String::from_utf8_lossy(&vit(&args).stdout).into_owned();
    let lines = format!(
        "Best Validation Accuracy: {:.2}%, saved as {}\n\
         Best EMA Validation Accuracy: {:.2}%, saved as {}\n",
        100.0 * model_acc,
        best_model.display(),
        100.0 * ema_acc,
        best_ema_model.display()
    );
    assert!(stdout.ends_with(&lines), "{lines:?} does not end {stdout}");

    // Fewer training images than --batch-size: one step of them all.
    for (subset, images) in [
        ("30", "30 cifar10 training images"),
        ("1", "1 cifar10 training image"),
    ] {
        let small = root.join(format!("small-{subset}"));
        let mut args = tiny_run_args(data_dir.to_str().unwrap(), small.to_str().unwrap());
        #[rustfmt::skip]
        args.extend(["--epochs", "1", "--batch-size", "64", "--warmup-epochs", "0", "--train-subset", subset]);
        let stderr = String::from_utf8_lossy(&vit(&args).stderr).into_owned();
        assert!(
            stderr.contains(&format!(
                "on {images} (testing on 200): 1 epoch of 1 step, batch {subset}, notebook recipe"
            )),
            "{stderr}"
        );
    }
}

/// `--mix-off-epoch` at or past `--epochs` leaves no epoch unmixed: a warning, given with the
/// flags' checks (so before the data is read: here there is none), and none when an epoch
/// is left to train on single images.
#[test]
fn mix_off_epoch_not_below_epochs_is_a_warning() {
    let root = TempDir::new("mix-off-warning");
    let (nowhere, run) = (root.join("no-data"), root.join("run"));
    for (epochs, off, warned) in [("1", "1", true), ("2", "3", true), ("2", "1", false)] {
        let mut args = tiny_run_args(nowhere.to_str().unwrap(), run.to_str().unwrap());
        args.extend(["--mixup", "0.8", "--epochs", epochs, "--mix-off-epoch", off]);
        let stderr = vit_fails(&args);
        let warning = format!(
            "warning: --mix-off-epoch {off} is not below --epochs {epochs}: every epoch mixes"
        );
        assert_eq!(stderr.contains(&warning), warned, "{args:?}: {stderr}");
    }
}
