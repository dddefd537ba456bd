//! A loss that diverges stops the run, and what it saved is from before the divergence.

use crate::common::{assert_contains, seeded, vit, vit_fails, TempDir};
use crate::{
    colour_cifar10, colour_dataset, options, read_metrics, refused_resume, run_training,
    tiny_run_args, tiny_settings,
};
use std::sync::atomic::AtomicBool;
use tch::Device;
use vit_tch::train::{self, Outcome, RunOptions, StopPoint, TrainSettings};

/// Weights the first steps send to infinity: the training loss of the first epoch is not
/// finite, which stops the run at that epoch's end, named as the first (1-based, as the
/// progress bar counts), before any weights are saved. Having saved nothing, the run may
/// be trained again into the same --out, as the message says.
#[test]
fn a_training_loss_that_diverges_in_the_first_epoch_stops_the_run() {
    let (root, data_dir) = colour_cifar10("diverged-training");
    let run = root.join("run");
    let (data, out) = (data_dir.to_str().unwrap(), run.to_str().unwrap());
    let mut args = tiny_run_args(data, out);
    #[rustfmt::skip]
    args.extend(["--lr", "1e30", "--clip-grad", "0", "--epochs", "2", "--batch-size", "100"]);
    let stderr = vit_fails(&args);
    assert!(
        stderr.contains("the training loss became ")
            && stderr.contains(
                " in epoch 1; stopped (no epoch finished, so there are no weights to keep)"
            )
            && stderr.contains(
                "Train again with a lower --lr or --weight-decay, or --clip-grad 1 to clip the \
                 gradients; the same --out will do, as the run saved nothing there"
            ),
        "{stderr}"
    );
    assert!(!run.join("last_model.safetensors").exists());
    let mut args = tiny_run_args(data, out);
    #[rustfmt::skip]
    args.extend(["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "100", "--train-subset", "100"]);
    let output = vit(&args);
    assert!(String::from_utf8_lossy(&output.stderr).contains("starting it over"));
    assert_eq!(read_metrics(&run).1.len(), 1);
}

/// Weights that diverge in the second epoch: the run stops there, pointing to the first
/// epoch's weights, which it kept (finite, and still loadable), and to another --out, as
/// this one holds them. The weight decay scales the weight matrices by about -1e9 a step:
/// the first epoch's test loss is large but finite, the second's attention scores overflow.
/// A resume goes on from the start of the second epoch, and replays its divergence.
#[test]
fn a_loss_that_diverges_after_the_first_epoch_points_to_its_weights() {
    let (root, data_dir) = colour_cifar10("diverged-later");
    let run = root.join("run");
    let (data, out) = (data_dir.to_str().unwrap(), run.to_str().unwrap());
    let mut args = tiny_run_args(data, out);
    #[rustfmt::skip]
    args.extend(["--epochs", "2", "--batch-size", "300", "--train-subset", "300", "--lr", "1", "--weight-decay", "1e9", "--warmup-epochs", "0", "--clip-grad", "0"]);
    let stderr = vit_fails(&args);
    // The run is warned at its start that such a decay wrecks the weights.
    assert!(
        stderr.contains(
            "warning: --lr 1 times --weight-decay 1000000000 is 1000000000: AdamW multiplies \
             the weights by 1 - lr x weight decay each step"
        ),
        "{stderr}"
    );
    let last_model = run.join("last_model.safetensors");
    let expected = format!(
        " in epoch 2; stopped (the last good weights are in {}). Train again with a lower \
         --lr or --weight-decay, or --clip-grad 1 to clip the gradients; use another --out: \
         this one keeps what the run saved",
        last_model.display()
    );
    assert_contains(&stderr, &expected);
    assert_eq!(read_metrics(&run).1.len(), 1);
    args.push("--resume");
    let resumed = vit_fails(&args);
    let resuming = format!("Resuming {out} at the start of epoch 2 (of 2)\n");
    assert!(
        resumed.contains(&resuming) && resumed.contains(&expected),
        "{resumed}"
    );
    assert_eq!(read_metrics(&run).1.len(), 1);
    let loaded = vit_tch::checkpoint::load(&last_model, Device::Cpu).unwrap();
    for (name, weights) in loaded.vs.variables() {
        assert!(
            weights.isfinite().all().int64_value(&[]) == 1,
            "{name} is not finite"
        );
    }
}

/// One epoch, in batches of 300, at a learning rate that makes the loss diverge at once.
fn diverging_settings() -> TrainSettings {
    TrainSettings {
        lr: 1e30,
        clip_grad: 0.0,
        warmup_epochs: 0,
        ..tiny_settings(1, 300)
    }
}

/// A loss that diverges after the run saved its state (here: interrupted after its first
/// step, then resumed) sends the user to another --out: this one keeps what was saved, so
/// a new run there would be refused. A resume interrupted after its step whose loss is no
/// longer finite stops the same way, and its diverged weights do not replace the saved
/// state.
#[test]
fn a_loss_that_diverges_after_a_saved_state_advises_another_out() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("diverged-after-save");
    let run = root.join("run");
    // Three steps an epoch: the second, resumed, has a diverged loss and is not the last.
    let settings = TrainSettings {
        batch_size: 200,
        ..diverging_settings()
    };
    match run_training(&settings, &dataset, &run, false, true) {
        Outcome::Interrupted { at, .. } => {
            assert_eq!(at, StopPoint::AfterStep { epoch: 1, step: 1 })
        }
        Outcome::Finished => panic!("the interrupted run finished"),
    }
    let state = std::fs::read(run.join("resume.safetensors")).unwrap();
    let interrupt = AtomicBool::new(true);
    let Err(error) = train::train(&settings, &dataset, &options(&run, true, &interrupt)) else {
        panic!("a resume interrupted after a diverged step saved it");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("the training loss became ") && error.contains(" in epoch 1; stopped ("),
        "{error}"
    );
    assert!(std::fs::read(run.join("resume.safetensors")).unwrap() == state);
    let error = refused_resume(&settings, &dataset, &run);
    assert!(
        error.contains(" in epoch 1; stopped (no epoch finished")
            && error.contains("; use another --out: this one keeps what the run saved"),
        "{error}"
    );
}

/// A step that sends the weights to infinity has a finite loss (computed before its
/// update): an interrupt right after it stops the run as a diverged loss does, and saves no
/// state (which a resume would refuse as damaged).
#[test]
fn weights_the_step_before_an_interrupt_sent_to_infinity_are_not_saved() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let root = TempDir::new("diverged-weights");
    let run = root.join("run");
    // Three steps an epoch, so that the interrupt saves in the middle of it.
    let settings = TrainSettings {
        lr: 1e300,
        batch_size: 200,
        ..diverging_settings()
    };
    let interrupt = AtomicBool::new(true);
    let Err(error) = train::train(&settings, &dataset, &options(&run, false, &interrupt)) else {
        panic!("a run interrupted after its weights became infinite saved them");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("the weights' norm became ")
            && error.contains(
                " in epoch 1; stopped (no epoch finished, so there are no weights to keep)"
            ),
        "{error}"
    );
    assert!(!run.join("resume.safetensors").exists());
}

/// Without --out, a diverged run's advice names no --out: the same command trains into a
/// new numbered folder, and the one that saved nothing may go. A run that clipped its
/// gradients already is told to clip them harder.
#[test]
fn a_diverged_run_without_out_is_told_the_same_command_starts_anew() {
    let _turn = seeded(0);
    let dataset = colour_dataset();
    let settings = TrainSettings {
        clip_grad: 1.0,
        ..diverging_settings()
    };
    let root = TempDir::new("diverged-numbered");
    let flag = AtomicBool::new(false);
    let base = root.join("runs/20261130-120000");
    let options = RunOptions {
        numbered_out: true,
        ..options(&base, false, &flag)
    };
    let Err(error) = train::train(&settings, &dataset, &options) else {
        panic!("a run at --lr 1e30 finished");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains(" in epoch 1; stopped (")
            && error.ends_with(&format!(
                "--weight-decay, or a smaller --clip-grad; the same command trains into a new \
                 run folder ({} saved nothing: delete it)",
                base.display()
            )),
        "{error}"
    );
}
