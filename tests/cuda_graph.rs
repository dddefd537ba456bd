//! `--cuda-graph`. What a graph replays is checked on the CPU: the update that reads its
//! learning rate from a tensor and counts its step on the device is the ordinary AdamW
//! step. The capture and replay themselves need CUDA: that test runs where there is one.

mod common;

use common::{
    assert_contains, cuda_device, fixture, fixture_batch, load_params, max_abs_error, seeded,
    vit_fails,
};
use tch::{nn, Device, Kind, Tensor};
use vit_tch::cli::{CudaGraphScope, Precision};
use vit_tch::data::augment::Policy;
use vit_tch::model::{ViTConfig, VisionTransformer};
use vit_tch::optim::AdamW;
use vit_tch::train::{
    forward_backward_update, train_step, CudaGraphSteps, Regularization, StepOptions, StepOutput,
    TrainBatch,
};

const OPTIONS: StepOptions = StepOptions {
    label_smoothing: 0.1,
    clip_grad: 0.5,
    precision: Precision::Fp32,
};

/// The fixture model (no dropout) with its optimizer, on `device`.
fn fixture_model(device: Device) -> (nn::VarStore, VisionTransformer, AdamW) {
    let file = fixture("adamw_steps");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = VisionTransformer::new(&vs.root(), &file.config().unwrap()).unwrap();
    load_params(&file, &vs);
    vs.set_device(device);
    let optimizer = AdamW::new(&vs, 0.05).unwrap();
    (vs, model, optimizer)
}

fn largest_difference(a: &nn::VarStore, b: &nn::VarStore) -> (f64, String) {
    let b = b.variables();
    a.variables()
        .into_iter()
        .map(|(name, t)| {
            (
                max_abs_error(&t.to_device(Device::Cpu), &b[&name].to_device(Device::Cpu)),
                name,
            )
        })
        .fold((0.0, String::new()), |worst, next| {
            // A NaN is the worst difference (`>` is false for it).
            if next.0.is_nan() || next.0 > worst.0 {
                next
            } else {
                worst
            }
        })
}

/// Three steps of what a graph captures (the update reading a float32 learning-rate tensor
/// and advancing the step counter on the device, counted on the host after) against three
/// `train_step`s: the same parameters, moments and step count, bit for bit. The learning
/// rate is a power of two, which float32 holds exactly.
#[test]
fn the_captured_update_is_the_ordinary_step() {
    let _turn = seeded(0);
    let batch = fixture_batch(&fixture("adamw_steps"), Device::Cpu);
    let lr = 1.0 / 1024.0;
    let (eager_vs, eager_model, mut eager) = fixture_model(Device::Cpu);
    let (device_vs, device_model, mut on_device) = fixture_model(Device::Cpu);
    let lr_tensor = Tensor::from(lr as f32);
    // Where a graph captures the optimizer's tensors: they stay there through its steps
    // and a restored state (a replay checks it is given them), and are not another's.
    let captured_at = on_device.tensor_addresses();
    assert_ne!(captured_at, eager.tensor_addresses());
    for _ in 0..3 {
        let expected = train_step(&eager_model, &mut eager, &batch, lr, OPTIONS);
        on_device.zero_grad();
        let actual: StepOutput = forward_backward_update(
            &device_model,
            &mut on_device,
            &batch,
            OPTIONS,
            |optimizer| optimizer.step_on_device(&lr_tensor).unwrap(),
            &mut || {},
        );
        on_device.count_step();
        assert_eq!(actual.loss, expected.loss);
        assert_eq!(actual.grad_norm, expected.grad_norm);
    }
    assert_eq!(on_device.steps_taken(), 3);
    assert_eq!(largest_difference(&device_vs, &eager_vs).0, 0.0);
    let (a, b) = (on_device.state_tensors(), eager.state_tensors());
    for (name, tensor) in &a {
        assert_eq!(tensor, &b[name], "{name}");
    }
    on_device.load_state(&b, 3).unwrap();
    assert_eq!(on_device.tensor_addresses(), captured_at);

    // The loop kernel has no update on the device.
    let (_, _, mut looping) = fixture_model(Device::Cpu);
    looping.fused = false;
    let error = looping.step_on_device(&lr_tensor).unwrap_err();
    assert!(error.to_string().contains("fused AdamW"), "{error}");
}

#[test]
fn cuda_graphs_are_refused_off_cuda() {
    let error = CudaGraphSteps::new(Device::Cpu, 2, CudaGraphScope::Batch)
        .err()
        .unwrap();
    assert!(
        error
            .to_string()
            .contains("--cuda-graph needs a CUDA device"),
        "{error}"
    );
    let stderr = vit_fails(&[
        "bench",
        "--config",
        "tiny",
        "--device",
        "cpu",
        "--cuda-graph",
    ]);
    assert_contains(&stderr, "--cuda-graph needs a CUDA device");
}

/// Where CUDA is: six steps through a graph (three eager warm-up steps, the capture, then
/// replays, with a smaller batch run eagerly in between) against six eager steps. The
/// model has no dropout, so only the kernels' rounding may differ.
#[test]
fn graph_steps_follow_the_eager_steps_on_cuda() {
    let Some(device) = cuda_device("skipped") else {
        return;
    };
    let _turn = seeded(0);
    let batch = fixture_batch(&fixture("adamw_steps"), device);
    graph_steps_follow_eager_steps(device, &batch, &[&TrainBatch::shallow_clone], 0.0, true);
}

/// Where CUDA is: the same with the strong recipe's augmentation of uint8 images
/// (AutoAugment, random erasing, MixUp/CutMix) and stochastic depth inside the graph
/// (`--cuda-graph`); then, after `start_over`, with the batches of an epoch past
/// `--mix-off-epoch` (no mixing); then with RandAugment. Each step is seeded as training
/// seeds it, so a replay must draw what the eager step drew.
#[test]
fn graph_steps_with_the_strong_augmentation_in_the_graph_follow_the_eager_steps_on_cuda() {
    strong_graph_steps_follow_eager_steps(true);
}

/// Where CUDA is: the same with the augmentation before each replay
/// (`--cuda-graph=step`): the graph takes in the augmented batch and its soft targets, one
/// graph for all three phases, as in training, where mixed targets give way to unmixed
/// ones past `--mix-off-epoch`.
#[test]
fn graph_steps_with_the_strong_augmentation_before_the_graph_follow_the_eager_steps_on_cuda() {
    strong_graph_steps_follow_eager_steps(false);
}

fn strong_graph_steps_follow_eager_steps(augment_in_graph: bool) {
    let Some(device) = cuda_device("skipped") else {
        return;
    };
    let _turn = seeded(0);
    let config = fixture("adamw_steps").config().unwrap();
    let side = config.image_size;
    let inputs = TrainBatch {
        images: Tensor::randint(256, [8, 3, side, side], (Kind::Uint8, device)),
        labels: Tensor::randint(config.num_classes, [8], (Kind::Int64, device)),
        soft_targets: None,
    };
    let autoaugment = common::strong_augmentation();
    let mut randaugment = common::strong_augmentation();
    if let Some(augment) = &mut randaugment.augment {
        augment.policy = Some(Policy::default());
    }
    let prepare = |regularization, epoch| training_batch(&config, regularization, epoch);
    // Two seeds give two different batches: the check below cannot pass by a replay that
    // repeats the captured step's draws.
    tch::manual_seed(1);
    let first = prepare(&autoaugment, 0)(&inputs).images;
    tch::manual_seed(2);
    assert!(max_abs_error(&prepare(&autoaugment, 0)(&inputs).images, &first) > 0.1);
    graph_steps_follow_eager_steps(
        device,
        &inputs,
        &[
            &prepare(&autoaugment, 0),
            &prepare(&autoaugment, 1),
            &prepare(&randaugment, 0),
        ],
        0.1,
        augment_in_graph,
    );
}

/// The trainer's augmentation for a step of `epoch`: `TrainBatch::new` of its inputs.
fn training_batch<'a>(
    config: &'a ViTConfig,
    regularization: &'a Regularization,
    epoch: usize,
) -> impl Fn(&TrainBatch) -> TrainBatch + 'a {
    move |inputs| {
        TrainBatch::new(
            &inputs.images,
            inputs.labels.shallow_clone(),
            config,
            regularization,
            OPTIONS.label_smoothing,
            epoch,
        )
    }
}

/// For each of `prepares` in turn, six steps of `prepare(inputs)` through a graph for full
/// batches of `inputs` (the fifth on its first image alone, run eagerly), each seeded,
/// against six seeded eager steps: the same losses, predictions and parameters, up to the
/// kernels' rounding. `prepare` runs inside the graph where `prepare_in_graph` (the graph
/// then starts over for each), else before each step, as the trainer does with
/// `--cuda-graph` and `--cuda-graph=step`. Both models drop paths at `drop_path`.
fn graph_steps_follow_eager_steps(
    device: Device,
    inputs: &TrainBatch,
    prepares: &[&dyn Fn(&TrainBatch) -> TrainBatch],
    drop_path: f64,
    prepare_in_graph: bool,
) {
    let smaller = TrainBatch {
        images: inputs.images.narrow(0, 0, 1),
        labels: inputs.labels.narrow(0, 0, 1),
        soft_targets: None,
    };
    let (eager_vs, mut eager_model, mut eager) = fixture_model(device);
    let (graph_vs, mut graph_model, mut graphed) = fixture_model(device);
    eager_model.set_drop_path_rate(drop_path);
    graph_model.set_drop_path_rate(drop_path);
    let scope = match prepare_in_graph {
        true => CudaGraphScope::Batch,
        false => CudaGraphScope::Step,
    };
    let mut graph = CudaGraphSteps::new(device, inputs.images.size()[0], scope).unwrap();
    for (phase, prepare) in prepares.iter().enumerate() {
        // As the trainer at --mix-off-epoch: the step scope's graph stays as it is.
        graph.start_over();
        for step in 0..6 {
            let inputs = if step == 4 { &smaller } else { inputs };
            let lr = 1e-3 * (step + 1) as f64;
            let case =
                format!("phase {phase}, step {step}, prepared in the graph: {prepare_in_graph}");
            tch::manual_seed(100 + step);
            let expected = train_step(&eager_model, &mut eager, &prepare(inputs), lr, OPTIONS);
            tch::manual_seed(100 + step);
            let actual = graph
                .step(&graph_model, &mut graphed, inputs, *prepare, lr, OPTIONS)
                .unwrap();
            let loss_error = max_abs_error(&actual.loss, &expected.loss);
            assert!(loss_error < 1e-4, "{case}: loss off by {loss_error}");
            assert_eq!(
                actual.correct.to_kind(Kind::Int64),
                expected.correct.to_kind(Kind::Int64),
                "{case}"
            );
        }
    }
    assert_eq!(graphed.steps_taken(), 6 * prepares.len() as i64);
    let (error, name) = largest_difference(&graph_vs, &eager_vs);
    assert!(error < 1e-4, "{name} off by {error}");
    // Another optimizer is refused: the graph would update the captured one's memory.
    let error = graph
        .step(
            &eager_model,
            &mut eager,
            inputs,
            prepares[prepares.len() - 1],
            1e-3,
            OPTIONS,
        )
        .err()
        .expect("a replay given another optimizer ran");
    assert!(
        error
            .to_string()
            .contains("pass the optimizer it was captured with"),
        "{error}"
    );
}
