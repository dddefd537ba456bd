//! `vit bench`: training and inference throughput of one configuration, and peak memory.
//!
//! The timed work is what `vit train` does per step (forward, label-smoothed loss,
//! backward, gradient clipping, AdamW), and the model's forward pass per evaluation batch,
//! on random inputs, so the figures compare directly with the same model run in PyTorch
//! (bench/compare.py).

use crate::cli::{
    AdamWKernel, BenchArgs, CudaGraphScope, Precision, DEFAULT_CLIP_GRAD, DEFAULT_LABEL_SMOOTHING,
    DEFAULT_LR, DEFAULT_WEIGHT_DECAY,
};
use crate::ffi;
use crate::listing::noun_for;
use crate::model::{ViTConfig, VisionTransformer};
use crate::optim::AdamW;
use crate::train::{forward_backward_update, train_step, CudaGraphSteps, StepOptions, TrainBatch};
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

/// What `vit bench` measured and how: printed as text, or as JSON with `--json`.
#[derive(Serialize)]
pub struct BenchReport {
    /// The `--config` preset the model started from.
    pub config: String,
    /// The model measured: the preset with any of the nine flags applied.
    pub model: ViTConfig,
    pub device: String,
    pub precision: String,
    pub threads: i32,
    pub batch_size: i64,
    pub steps: usize,
    /// Untimed training steps before the timed ones: `--warmup`, and with `--cuda-graph` at
    /// least the graph's eager steps and its capture. (Inference warms up `--warmup` steps.)
    pub warmup: usize,
    pub fused_attention: bool,
    pub fused_adamw: bool,
    /// CPU dropout masks from libtorch's sampler (`--libtorch-dropout`) instead of vit's;
    /// false for a model without dropout, which draws none.
    pub libtorch_dropout: bool,
    /// CPU linear layers through libtorch's `linear` instead of oneDNN: `--libtorch-linear`,
    /// or this CPU's default without it or `--onednn-linear` (see `onednn_linear_by_default`),
    /// or where no product would run in oneDNN (see `products_reach_onednn`).
    pub libtorch_linear: bool,
    /// Training steps replayed as a CUDA graph (`--cuda-graph`).
    pub cuda_graph: bool,
    pub parameters: i64,
    /// The training loss of the last timed step. Every setting starts from the same seed
    /// and batch, so two that compute the same function agree closely, and a switch that
    /// changed nothing gives the very same bits.
    pub last_step_loss: f64,
    pub train_images_per_s: f64,
    pub infer_images_per_s: f64,
    /// One image's forward pass in FLOPs (`ViTConfig::forward_flops`: the matrix products
    /// and the patch convolution, 2 per multiply-add).
    pub forward_flops_per_image: f64,
    /// The model FLOPs the timed steps did per second: training counts 3 forward passes an
    /// image (the backward pass is about twice the forward), inference 1.
    pub train_flops_per_s: f64,
    pub infer_flops_per_s: f64,
    /// Peak resident memory of the process (VmHWM), in bytes.
    pub peak_rss_bytes: u64,
    /// Resident memory before the model was built (libtorch loaded, no tensors), in bytes.
    pub baseline_rss_bytes: u64,
    /// On CUDA: the allocator's peak bytes allocated to tensors from the first warm-up step
    /// to the end (training, inference and `--phases`' steps), the model, optimizer state
    /// and batch included (`torch.cuda.max_memory_allocated`).
    pub peak_device_bytes: Option<i64>,
    /// With `--phases`: milliseconds per training step in each phase, of eager steps even
    /// with `--cuda-graph` (a replayed graph has no phases to time apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_ms_per_step: Option<PhaseTimes>,
}

/// Milliseconds per training step spent in each part of `train_step`.
#[derive(Serialize, Default, Debug, Clone, Copy)]
pub struct PhaseTimes {
    /// zero_grad, forward in train mode and the loss.
    pub forward: f64,
    pub backward: f64,
    pub clip: f64,
    /// AdamW and the accuracy count.
    pub optimizer: f64,
}

/// Whether the largest linear products of `config`'s model, a block's qkv and MLP products
/// over a batch of `batch_size` images, run in oneDNN where the model asks for it
/// (`ffi::onednn_linear`): in fp32 (bf16 autocast runs libtorch's `linear`), with at least
/// [`ffi::ONEDNN_MIN_MULTIPLY_ADDS`] multiply-adds. (The head's product, a token an image,
/// may stay below where these reach it.)
fn products_reach_onednn(config: &ViTConfig, batch_size: i64, precision: Precision) -> bool {
    let tokens = batch_size * config.num_tokens();
    let largest = (tokens.saturating_mul(config.embed_dim))
        .saturating_mul((3 * config.embed_dim).max(config.mlp_dim));
    precision == Precision::Fp32 && largest >= ffi::ONEDNN_MIN_MULTIPLY_ADDS
}

/// A training step's FLOPs per forward FLOP: the forward, and a backward pass of about
/// twice its work (the gradients of each product's input and of its weight).
const TRAINING_FLOPS_PER_FORWARD: f64 = 3.0;

impl BenchReport {
    /// The report of `args`' run of `model` (its weights in `vs`, `optimizer` its AdamW),
    /// from what `measured` timed and the process's memory now. The kernels are read from
    /// the model and optimizer that ran, not from the flags that chose them.
    fn new(
        args: &BenchArgs,
        vs: &nn::VarStore,
        model: &VisionTransformer,
        optimizer: &AdamW,
        measured: Measurements,
        baseline_rss_bytes: u64,
    ) -> Self {
        let images_timed = (args.batch_size as usize * args.steps) as f64;
        let (train_images_per_s, infer_images_per_s) = (
            images_timed / measured.train_seconds,
            images_timed / measured.infer_seconds,
        );
        let config = model.config.clone();
        let forward_flops_per_image = config.forward_flops();
        let draws_dropout_masks = config.dropout > 0.0;
        let linear_in_onednn = model.onednn_linear()
            && products_reach_onednn(&config, args.batch_size, args.precision);
        BenchReport {
            config: args.model.preset.clone(),
            model: config,
            device: crate::cli::device_name(vs.device()),
            precision: crate::cli::value_name(&args.precision),
            threads: tch::get_num_threads(),
            batch_size: args.batch_size,
            steps: args.steps,
            warmup: measured.train_warmup,
            fused_attention: model.fused_attention(),
            fused_adamw: optimizer.fused,
            libtorch_dropout: model.libtorch_dropout() && draws_dropout_masks,
            libtorch_linear: !linear_in_onednn,
            cuda_graph: args.cuda_graph,
            parameters: crate::model::parameter_total(vs),
            last_step_loss: measured.last_step_loss,
            train_images_per_s,
            infer_images_per_s,
            forward_flops_per_image,
            train_flops_per_s: TRAINING_FLOPS_PER_FORWARD
                * forward_flops_per_image
                * train_images_per_s,
            infer_flops_per_s: forward_flops_per_image * infer_images_per_s,
            peak_rss_bytes: peak_rss_bytes(),
            baseline_rss_bytes,
            peak_device_bytes: measured.peak_device_bytes,
            phase_ms_per_step: measured.phase_ms_per_step,
        }
    }

    /// The report as text: the set-up line, then one line a measurement.
    fn text(&self) -> String {
        use std::fmt::Write;
        let mut text = String::new();
        let _ = writeln!(text, "{}", self.setup_line());
        let _ = writeln!(
            text,
            "train:     {:9.1} images/s {:9.1} GFLOP/s",
            self.train_images_per_s,
            self.train_flops_per_s / 1e9
        );
        let _ = writeln!(
            text,
            "inference: {:9.1} images/s {:9.1} GFLOP/s",
            self.infer_images_per_s,
            self.infer_flops_per_s / 1e9
        );
        let _ = writeln!(
            text,
            "loss:      {:9.6} (the last timed step's)",
            self.last_step_loss
        );
        let mib = |bytes: f64| bytes / (1 << 20) as f64;
        let _ = writeln!(
            text,
            "peak RSS:  {:9.1} MiB",
            mib(self.peak_rss_bytes as f64)
        );
        if let Some(bytes) = self.peak_device_bytes {
            let _ = writeln!(text, "peak CUDA: {:9.1} MiB allocated", mib(bytes as f64));
        }
        if let Some(phases) = &self.phase_ms_per_step {
            let _ = writeln!(
                text,
                "ms per training step{}: forward {:.1}, backward {:.1}, clip {:.1}, optimizer {:.1}",
                if self.cuda_graph { " (eager)" } else { "" },
                phases.forward,
                phases.backward,
                phases.clip,
                phases.optimizer
            );
        }
        text
    }

    /// What was measured, and how: the model, its parameters, the batch, the precision,
    /// the device and its threads, and the kernels chosen.
    fn setup_line(&self) -> String {
        format!(
            "{} ({} parameters), batch {}, {} on {} with {} {}, {} attention, {} AdamW{}{}{}",
            self.model.described_as(&self.config),
            self.parameters,
            self.batch_size,
            self.precision,
            self.device,
            self.threads,
            noun_for(self.threads, "thread"),
            if self.fused_attention {
                "fused"
            } else {
                "explicit"
            },
            if self.fused_adamw { "fused" } else { "loop" },
            if self.libtorch_dropout {
                ", libtorch dropout masks"
            } else {
                ""
            },
            match (self.device.as_str(), self.libtorch_linear) {
                ("cpu", true) => ", libtorch linear",
                ("cpu", false) => ", oneDNN linear",
                _ => "",
            },
            if self.cuda_graph { ", CUDA graph" } else { "" }
        )
    }
}

/// `vit bench`: times training steps and inference batches of the model the flags give.
pub fn run(args: &BenchArgs) -> Result<()> {
    let baseline_rss_bytes = rss_bytes("VmRSS:");
    let device = args.device.set_up()?;
    let config = args.model.resolve()?;
    if device == Device::Cpu {
        config.check_steps_fit_in_memory(args.batch_size)?;
    }
    if args.libtorch_dropout && config.dropout == 0.0 {
        eprintln!(
            "warning: --libtorch-dropout changes nothing here: the model has no dropout \
             (--dropout 0), so no masks are drawn; add --dropout P to time them"
        );
    }
    let onednn_idle =
        device == Device::Cpu && !products_reach_onednn(&config, args.batch_size, args.precision);
    if args.onednn_linear && onednn_idle {
        eprintln!(
            "warning: --onednn-linear changes nothing here: {}, so the linear layers run in \
             libtorch's linear",
            match args.precision {
                Precision::Bf16 => {
                    "oneDNN's path is for fp32 products, not bf16 autocast's".to_string()
                }
                Precision::Fp32 => format!(
                    "the products are under the {} multiply-adds that oneDNN's set-up pays for",
                    ffi::ONEDNN_MIN_MULTIPLY_ADDS
                ),
            }
        );
    }
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let (model, mut optimizer) = model_and_optimizer(&vs, &config, args)?;
    let cuda_graph = args
        .cuda_graph
        .then(|| CudaGraphSteps::new(device, args.batch_size, CudaGraphScope::Step))
        .transpose()?;
    crate::runtime::warn_if_bf16_is_slow(device, &[("--precision", args.precision)], false);
    let batch = random_batch(&config, args.batch_size, device);
    let measured = measure(args, device, &model, &mut optimizer, cuda_graph, &batch)?;
    let report = BenchReport::new(args, &vs, &model, &optimizer, measured, baseline_rss_bytes);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// The model of `config` in `vs`, and its AdamW, with the kernels `args` choose.
fn model_and_optimizer(
    vs: &nn::VarStore,
    config: &ViTConfig,
    args: &BenchArgs,
) -> Result<(VisionTransformer, AdamW)> {
    let mut model = VisionTransformer::new(&vs.root(), config)?;
    model.set_fused_attention(!args.explicit_attention);
    model.set_libtorch_dropout(args.libtorch_dropout);
    if args.libtorch_linear || args.onednn_linear {
        model.set_onednn_linear(args.onednn_linear);
    }
    let mut optimizer = AdamW::new(vs, DEFAULT_WEIGHT_DECAY)?;
    optimizer.fused = args.adamw == AdamWKernel::Fused;
    Ok((model, optimizer))
}

/// A batch of `batch_size` random images as the model takes them, float N(0, 1)
/// [batch_size, in_channels, image_size, image_size] in place of augmented, normalized ones
/// (the timed steps run no augmentation), with random int64 labels `[batch_size]`.
fn random_batch(config: &ViTConfig, batch_size: i64, device: Device) -> TrainBatch {
    let shape = [
        batch_size,
        config.in_channels,
        config.image_size,
        config.image_size,
    ];
    TrainBatch {
        images: Tensor::randn(shape, (Kind::Float, device)),
        labels: Tensor::randint(config.num_classes, [batch_size], (Kind::Int64, device)),
        soft_targets: None,
    }
}

/// What [`measure`] timed, before it is turned into rates.
struct Measurements {
    /// The untimed training steps ([`BenchReport::warmup`]).
    train_warmup: usize,
    train_seconds: f64,
    infer_seconds: f64,
    last_step_loss: f64,
    phase_ms_per_step: Option<PhaseTimes>,
    peak_device_bytes: Option<i64>,
}

/// Times `args.steps` training steps on `batch` (replayed by `cuda_graph` where there is
/// one), then as many forward passes, then with `--phases` the training steps' phases;
/// the device's peak memory counts from the first warm-up step.
fn measure(
    args: &BenchArgs,
    device: Device,
    model: &VisionTransformer,
    optimizer: &mut AdamW,
    mut cuda_graph: Option<CudaGraphSteps>,
    batch: &TrainBatch,
) -> Result<Measurements> {
    let options = StepOptions {
        label_smoothing: DEFAULT_LABEL_SMOOTHING,
        clip_grad: DEFAULT_CLIP_GRAD,
        precision: args.precision,
    };
    ffi::reset_peak_memory(device)?;
    // With a graph, the warm-up covers its eager steps and the capture.
    let train_warmup = match cuda_graph {
        Some(_) => args.warmup.max(CudaGraphSteps::WARMUP_STEPS + 1),
        None => args.warmup,
    };
    let mut last_loss = None;
    let train_seconds = timed(device, train_warmup, args.steps, || {
        let output = match &mut cuda_graph {
            Some(graph) => graph.step(
                model,
                optimizer,
                batch,
                &TrainBatch::shallow_clone,
                DEFAULT_LR,
                options,
            )?,
            None => train_step(model, optimizer, batch, DEFAULT_LR, options),
        };
        last_loss = Some(output.loss);
        Ok(())
    })?;
    let last_step_loss = last_loss.map_or(f64::NAN, |loss| loss.double_value(&[]));
    let infer_seconds = timed(device, args.warmup, args.steps, || {
        let _ = tch::no_grad(|| {
            ffi::autocast(args.precision, device, || {
                model.forward_t(&batch.images, false)
            })
        });
        Ok(())
    })?;
    let phase_ms_per_step = args
        .phases
        .then(|| phase_times(device, args.steps, model, optimizer, batch, options));
    Ok(Measurements {
        train_warmup,
        train_seconds,
        infer_seconds,
        last_step_loss,
        phase_ms_per_step,
        peak_device_bytes: ffi::peak_memory(device)?,
    })
}

/// Seconds for `steps` calls of `work` after `warmup` untimed ones, with the device
/// synchronised before each clock reading.
fn timed(
    device: Device,
    warmup: usize,
    steps: usize,
    mut work: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        work()?;
    }
    synchronize(device);
    let start = Instant::now();
    for _ in 0..steps {
        work()?;
    }
    synchronize(device);
    Ok(start.elapsed().as_secs_f64())
}

/// `train_step` timed phase by phase over `steps` steps, the device synchronised at each
/// phase's end: the same step, with [`forward_backward_update`]'s laps.
fn phase_times(
    device: Device,
    steps: usize,
    model: &VisionTransformer,
    optimizer: &mut AdamW,
    batch: &TrainBatch,
    options: StepOptions,
) -> PhaseTimes {
    // forward (with zero_grad and the loss), backward, clip, optimizer (with the count).
    let mut totals = [0.0f64; 4];
    for _ in 0..steps {
        synchronize(device);
        let mut phase = 0;
        let mut start = Instant::now();
        let mut lap = || {
            synchronize(device);
            let now = Instant::now();
            totals[phase] += (now - start).as_secs_f64();
            (phase, start) = (phase + 1, now);
        };
        optimizer.zero_grad();
        let update = |optimizer: &mut AdamW| optimizer.step(DEFAULT_LR);
        let _ = forward_backward_update(model, optimizer, batch, options, update, &mut lap);
        lap();
    }
    let ms = |total: f64| 1e3 * total / steps as f64;
    PhaseTimes {
        forward: ms(totals[0]),
        backward: ms(totals[1]),
        clip: ms(totals[2]),
        optimizer: ms(totals[3]),
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// The process's peak resident set size (VmHWM in /proc/self/status), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    rss_bytes("VmHWM:")
}

/// A `/proc/self/status` memory line (`VmHWM:`, `VmRSS:`) in bytes, 0 where unknown.
fn rss_bytes(key: &str) -> u64 {
    crate::runtime::proc_memory_bytes("/proc/self/status", key).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    /// `vit bench ARGS` parsed.
    fn bench_args(args: &[&str]) -> BenchArgs {
        match crate::cli::parsed(&[&["bench"], args].concat()) {
            Command::Bench(args) => args,
            other => panic!("{other:?}"),
        }
    }

    /// The report of `args`' tiny model on the CPU, as if its training steps took 2 s, its
    /// forward passes 0.5 s and its warm-up 4 steps.
    fn report_of(args: &[&str]) -> BenchReport {
        let args = bench_args(args);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = args.model.resolve().unwrap();
        let (model, optimizer) = model_and_optimizer(&vs, &config, &args).unwrap();
        let measured = Measurements {
            train_warmup: 4,
            train_seconds: 2.0,
            infer_seconds: 0.5,
            last_step_loss: 2.25,
            phase_ms_per_step: None,
            peak_device_bytes: None,
        };
        BenchReport::new(&args, &vs, &model, &optimizer, measured, 1 << 20)
    }

    /// Images per second are the timed steps' images (the batch times --steps; the warm-up
    /// is not timed) over each pass's own seconds; the report gives the warm-up that ran,
    /// which a CUDA graph can make more than --warmup.
    #[test]
    fn the_rates_are_the_timed_images_over_each_passs_seconds() {
        #[rustfmt::skip]
        let report = report_of(&["--config", "tiny", "--batch-size", "8", "--steps", "5", "--warmup", "1"]);
        // 40 images in 2 s of training and in 0.5 s of inference.
        assert_eq!(report.train_images_per_s, 20.0);
        assert_eq!(report.infer_images_per_s, 80.0);
        assert_eq!((report.batch_size, report.steps, report.warmup), (8, 5, 4));
        let forward = ViTConfig::tiny().forward_flops();
        assert_eq!(report.train_flops_per_s, 3.0 * forward * 20.0);
        assert_eq!(report.infer_flops_per_s, forward * 80.0);
    }

    /// The text report names the kernels that ran, counts the threads in words, and gives
    /// each rate and the loss as the JSON has them and memory in MiB (2^20 bytes).
    #[test]
    fn the_text_report_says_what_ran_and_what_it_measured() {
        #[rustfmt::skip]
        let mut report = report_of(&[
            "--config", "tiny", "--batch-size", "8", "--steps", "5", "--dropout", "0.1",
            "--explicit-attention", "--adamw", "loop", "--libtorch-dropout", "--libtorch-linear",
        ]);
        report.threads = 1;
        report.peak_rss_bytes = 3 << 19;
        report.peak_device_bytes = Some(5 << 20);
        let parameters = report.parameters;
        let forward = ViTConfig::tiny().forward_flops();
        let text = report.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "tiny preset with the flags given ({parameters} parameters), batch 8, fp32 on \
                 cpu with 1 thread, explicit attention, loop AdamW, libtorch dropout masks, \
                 libtorch linear"
            )
        );
        let words =
            |line: &str| -> Vec<String> { line.split_whitespace().map(String::from).collect() };
        let gflops = |flops: f64| format!("{:.1}", flops / 1e9);
        assert_eq!(
            words(lines[1]),
            [
                "train:",
                "20.0",
                "images/s",
                &gflops(60.0 * forward),
                "GFLOP/s"
            ]
        );
        assert_eq!(
            words(lines[2]),
            [
                "inference:",
                "80.0",
                "images/s",
                &gflops(80.0 * forward),
                "GFLOP/s"
            ]
        );
        assert_eq!(words(lines[3])[..2], ["loss:", "2.250000"]);
        assert_eq!(words(lines[4]), ["peak", "RSS:", "1.5", "MiB"]);
        assert_eq!(
            words(lines[5]),
            ["peak", "CUDA:", "5.0", "MiB", "allocated"]
        );

        let mut report = report_of(&["--config", "tiny"]);
        report.threads = 2;
        // The CPU's linear kernel is named whichever it is (vit chooses it by CPU).
        report.libtorch_linear = false;
        let ends_with = |report: &BenchReport, end: &str| {
            let line = report.setup_line();
            assert!(line.ends_with(end), "{line}");
        };
        ends_with(
            &report,
            "batch 128, fp32 on cpu with 2 threads, fused attention, fused AdamW, oneDNN linear",
        );
        // On CUDA, libtorch's runs either way.
        report.device = "cuda".into();
        ends_with(
            &report,
            "fp32 on cuda with 2 threads, fused attention, fused AdamW",
        );
    }

    /// `timed` runs the warm-up's calls, then the timed ones, each once.
    #[test]
    fn timed_runs_the_warmup_and_the_steps_once_each() {
        let mut calls = 0;
        timed(Device::Cpu, 2, 3, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 5);
    }
}
