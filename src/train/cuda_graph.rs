//! `--cuda-graph`: the training step, its batch's augmentation included, recorded once as a
//! CUDA graph and replayed, so that a step costs the host one graph launch instead of
//! several hundred kernel launches (the strong recipe's AutoAugment, MixUp/CutMix and
//! erasing alone are hundreds), which is what bounds a model this small on a fast GPU
//! (bench/README.md, "host overhead").
//!
//! As PyTorch's whole-network capture (`torch.cuda.graph`): a few eager steps on a side
//! stream first (they set up cuBLAS workspaces, autograd's device threads, the
//! augmentation's constants and the like), then the capture of one full-size step on
//! inputs the graph owns; from then on each step copies its batch (as it comes from the
//! dataset, before augmentation; with `--cuda-graph=step`, augmented) and learning rate
//! into those and replays. The random draws of a replay (augmentation, dropout) come from
//! libtorch's generator as it stands when the replay starts, so a step seeded as the eager
//! one draws what it draws. A smaller batch (an epoch's last) runs eagerly.

use super::{forward_backward_update, train_step, StepOptions, StepOutput, TrainBatch};
use crate::cli::CudaGraphScope;
use crate::ffi::{self, CudaGraph};
use crate::model::VisionTransformer;
use crate::optim::AdamW;
use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

/// Training steps through a CUDA graph, once warmed up and captured. Every call must pass
/// the same model, optimizer and step options: the graph replays the step it captured.
pub struct CudaGraphSteps {
    /// Whether the graph takes in each step's `prepare` or its result.
    scope: CudaGraphScope,
    /// The images of a full batch: the batch shape the graph is captured for.
    batch_size: i64,
    warmup_steps_left: usize,
    captured: Option<CapturedStep>,
}

impl CudaGraphSteps {
    /// Eager steps before the capture.
    pub const WARMUP_STEPS: usize = 3;

    /// Steps on `device` whose full batches hold `batch_size` images, recording `scope`;
    /// nothing is captured yet. Fails unless `device` has CUDA graphs, saying what to do.
    pub fn new(device: Device, batch_size: i64, scope: CudaGraphScope) -> Result<Self> {
        Self::check_device(device)?;
        Ok(Self {
            scope,
            batch_size,
            warmup_steps_left: Self::WARMUP_STEPS,
            captured: None,
        })
    }

    /// Fails unless `device` has CUDA graphs, saying what to do.
    pub fn check_device(device: Device) -> Result<()> {
        ensure!(
            device.is_cuda(),
            "--cuda-graph needs a CUDA device (--device cuda), and this run's device is {}",
            crate::cli::device_name(device)
        );
        Ok(())
    }

    /// One training step, as `train_step` on `prepare(inputs)` (the augmentation): eager on
    /// a side stream while warming up, then captured (at the first full batch after the
    /// warm-up) and replayed. With the batch scope the graph takes in `prepare`, which must
    /// then compute the same thing at every call (the graph replays what it did at the
    /// capture; see [`Self::start_over`]) and must not wait for the device; with the step
    /// scope `prepare` runs eagerly and the graph takes in its result. The optimizer must
    /// run the fused AdamW kernel (its default), which reads the learning rate on the
    /// device. A failed capture leaves libtorch's CUDA state unusable for the rest of the
    /// process: the error says to run again with --cuda-graph=step or without a graph. The
    /// outputs of a replayed step are the graph's own, valid until the next step.
    pub fn step(
        &mut self,
        model: &VisionTransformer,
        optimizer: &mut AdamW,
        inputs: &TrainBatch,
        prepare: &dyn Fn(&TrainBatch) -> TrainBatch,
        lr: f64,
        options: StepOptions,
    ) -> Result<StepOutput> {
        // From here on, `inputs` are what the graph takes in and `prepare` what it records.
        let prepared;
        let (inputs, prepare): (_, &dyn Fn(&TrainBatch) -> TrainBatch) = match self.scope {
            CudaGraphScope::Batch => (inputs, prepare),
            CudaGraphScope::Step => {
                prepared = prepare(inputs);
                (&prepared, &TrainBatch::shallow_clone)
            }
        };
        ensure!(
            optimizer.fused,
            "--cuda-graph needs the fused AdamW kernel (--adamw fused): a graph replays its \
             update with the learning rate read on the device"
        );
        if self.warmup_steps_left > 0 {
            self.warmup_steps_left -= 1;
            return ffi::on_side_stream(inputs.images.device(), || {
                train_step(model, optimizer, &prepare(inputs), lr, options)
            });
        }
        if inputs.images.size()[0] != self.batch_size {
            return Ok(train_step(model, optimizer, &prepare(inputs), lr, options));
        }
        let captured = match &mut self.captured {
            Some(captured) => captured,
            empty => empty.insert(CapturedStep::capture(
                model, optimizer, inputs, prepare, options,
            )?),
        };
        ensure!(
            captured.fits(inputs) && captured.options == options,
            "a CUDA graph replays the step it captured: the batch shapes and step options \
             must stay as they were"
        );
        captured.replay(optimizer, inputs, lr)
    }

    /// For a `prepare` that computes something else from now on (the batches after
    /// `--mix-off-epoch` are no longer mixed): with the batch scope, drops the captured
    /// step, and the next steps warm up and capture again; the step scope's graph never
    /// held `prepare` and keeps its capture.
    pub fn start_over(&mut self) {
        if self.scope == CudaGraphScope::Batch {
            self.captured = None;
            self.warmup_steps_left = Self::WARMUP_STEPS;
        }
    }
}

/// One captured training step and the tensors it reads and writes.
struct CapturedStep {
    graph: CudaGraph,
    /// The inputs of the captured step (before what it prepares): each batch is copied into
    /// these. uint8 images as the dataset holds them with the batch scope, the augmented
    /// float ones with the step scope.
    inputs: TrainBatch,
    /// The learning rate, float32 [] on the device.
    lr: Tensor,
    /// The options the step was captured with.
    options: StepOptions,
    /// What the captured step leaves, rewritten by each replay.
    output: StepOutput,
    /// Where the optimizer's tensors (the model's parameters among them) were when captured
    /// ([`AdamW::tensor_addresses`]).
    optimizer_tensors: Vec<usize>,
}

impl CapturedStep {
    /// Captures `prepare` and a step on batches shaped like `like`.
    fn capture(
        model: &VisionTransformer,
        optimizer: &mut AdamW,
        like: &TrainBatch,
        prepare: &dyn Fn(&TrainBatch) -> TrainBatch,
        options: StepOptions,
    ) -> Result<Self> {
        let device = like.images.device();
        let inputs = TrainBatch {
            images: like.images.copy(),
            labels: like.labels.copy(),
            soft_targets: like.soft_targets.as_ref().map(Tensor::copy),
        };
        let lr = Tensor::zeros([], (Kind::Float, device));
        // Cleared, so that backward creates the gradients inside the capture, in the
        // graph's memory, and every replay writes them afresh rather than adding to them.
        optimizer.zero_grad();
        let (graph, output) = CudaGraph::capture(device, || {
            let batch = prepare(&inputs);
            let update =
                |optimizer: &mut AdamW| optimizer.step_on_device(&lr).expect("fused AdamW");
            forward_backward_update(model, optimizer, &batch, options, update, &mut || {})
        })
        .context(
            "capturing the training step as a CUDA graph failed; run again with \
             --cuda-graph=step (the augmentation outside the graph) or without --cuda-graph \
             (--resume continues from the last saved state)",
        )?;
        Ok(Self {
            graph,
            inputs,
            lr,
            options,
            output,
            optimizer_tensors: optimizer.tensor_addresses(),
        })
    }

    /// Whether `inputs` have the shapes and kinds the graph was captured with.
    fn fits(&self, inputs: &TrainBatch) -> bool {
        let same = |a: &Tensor, b: &Tensor| a.size() == b.size() && a.kind() == b.kind();
        let targets = match (&inputs.soft_targets, &self.inputs.soft_targets) {
            (Some(a), Some(b)) => same(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        same(&inputs.images, &self.inputs.images)
            && same(&inputs.labels, &self.inputs.labels)
            && targets
    }

    /// The step on `inputs` with learning rate `lr`: its inputs copied in, one replay. The
    /// outputs are the graph's, which the next replay overwrites (in stream order, so
    /// whatever is queued on them before it reads this step's values).
    fn replay(&self, optimizer: &mut AdamW, inputs: &TrainBatch, lr: f64) -> Result<StepOutput> {
        tch::no_grad(|| {
            self.inputs.images.shallow_clone().copy_(&inputs.images);
            self.inputs.labels.shallow_clone().copy_(&inputs.labels);
            if let (Some(to), Some(from)) = (&self.inputs.soft_targets, &inputs.soft_targets) {
                to.shallow_clone().copy_(from);
            }
            let _ = self.lr.shallow_clone().fill_(lr);
        });
        ensure!(
            optimizer.tensor_addresses() == self.optimizer_tensors,
            "a CUDA graph replays the step it captured: pass the optimizer it was captured with"
        );
        // SAFETY: the graph's own inputs, learning rate and outputs are held here; the
        // optimizer's tensors, the model's parameters among them, are `optimizer`'s (checked
        // above), borrowed for the call. Whatever else the step used outside the capture
        // was libtorch's (cuBLAS workspaces) or lives as long as the process.
        unsafe { self.graph.replay() }?;
        optimizer.count_step();
        Ok(StepOutput {
            loss: self.output.loss.shallow_clone(),
            correct: self.output.correct.shallow_clone(),
            grad_norm: self.output.grad_norm.as_ref().map(Tensor::shallow_clone),
        })
    }
}
