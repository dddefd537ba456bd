//! The Rust modules against the PyTorch reference (`tests/reference/vit_reference.py`),
//! on the fixtures `tests/reference/make_fixtures.py` writes: forward passes (fused and
//! explicit attention), gradients (without and with dropout), three clipped AdamW steps and
//! the attention maps; the whole model with its linear layers in oneDNN and in libtorch's
//! `linear`. Also a fresh model's initialisation against timm's, the learning-rate
//! schedule against PyTorch's schedulers (run in Python), the loss and the correct count
//! of a mixed batch, a training step's dropout, clipping under the limit, and
//! `--clip-grad 0`.

mod common;

use common::{
    assert_close, assert_within_6_sigma, cpu_store, fixture, fixture_batch, formula_fill,
    load_params, seeded, with_prefix,
};
use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};
use vit_tch::checkpoint::TensorFile;
use vit_tch::cli::Precision;
use vit_tch::model::{
    MultiHeadSelfAttention, PatchEmbedding, TransformerBlock, ViTConfig, VisionTransformer,
};
use vit_tch::optim::AdamW;
use vit_tch::train::{train_step, training_loss, StepOptions, TrainBatch};

const FORWARD_TOL: f64 = 1e-5;
const TRAIN_TOL: f64 = 1e-4;
/// For the parameters after `adamw_steps_match_pytorch`'s three steps: 17 times their
/// largest error here (5.8e-7, a `qkv.weight` under fused attention), where the steps move
/// them by up to 8e-3.
const STEPS_TOL: f64 = 1e-5;
const LABEL_SMOOTHING: f64 = 0.1;
const STEP_OPTIONS: StepOptions = StepOptions {
    label_smoothing: LABEL_SMOOTHING,
    clip_grad: 0.5,
    precision: Precision::Fp32,
};
const WEIGHT_DECAY: f64 = 0.05;
const STEP_LRS: [f64; 3] = [1e-3, 5e-3, 2e-3];

/// `build()`, holding the generator's lock (`common::seeded`): a module draws its initial
/// parameters from libtorch's global generator, and the dropout test's masks are what that
/// generator gives between its seeding and its forward pass, which must be its own draws.
fn built<T>(build: impl FnOnce() -> T) -> T {
    let _rng = seeded(0);
    build()
}

/// The small model of `file`'s config with the fixture's parameters, fused or explicit
/// attention, linear layers in oneDNN or in libtorch's `linear`.
fn small_model(file: &TensorFile, fused: bool, onednn: bool) -> (nn::VarStore, VisionTransformer) {
    let vs = cpu_store();
    let mut model = built(|| VisionTransformer::new(&vs.root(), &file.config().unwrap())).unwrap();
    model.set_fused_attention(fused);
    model.set_onednn_linear(onednn);
    load_params(file, &vs);
    (vs, model)
}

/// Every combination of fused attention and oneDNN linear layers.
const KERNELS: [(bool, bool); 4] = [(true, true), (true, false), (false, true), (false, false)];

#[test]
fn patch_embedding_matches_pytorch() {
    let file = fixture("patch_embedding");
    let c = file.config().unwrap();
    let vs = cpu_store();
    let module = built(|| {
        PatchEmbedding::new(
            vs.root(),
            c.image_size,
            c.patch_size,
            c.in_channels,
            c.embed_dim,
        )
    });
    load_params(&file, &vs);
    let output = module.forward(file.get("input").unwrap());
    assert_close(
        "patch embedding",
        &output,
        file.get("output").unwrap(),
        FORWARD_TOL,
    );
}

#[test]
fn multi_head_self_attention_matches_pytorch() {
    let file = fixture("multi_head_self_attention");
    let c = file.config().unwrap();
    let vs = cpu_store();
    let mut module = built(|| MultiHeadSelfAttention::new(vs.root(), c.embed_dim, c.num_heads));
    load_params(&file, &vs);
    for fused in [true, false] {
        module.fused = fused;
        let output = module.forward_t(file.get("input").unwrap(), false);
        let what = format!("attention (fused {fused})");
        assert_close(&what, &output, file.get("output").unwrap(), FORWARD_TOL);
    }
}

#[test]
fn transformer_block_matches_pytorch() {
    let file = fixture("transformer_block");
    let c = file.config().unwrap();
    let vs = cpu_store();
    let mut block =
        built(|| TransformerBlock::new(vs.root(), c.embed_dim, c.num_heads, c.mlp_dim, c.dropout));
    load_params(&file, &vs);
    for fused in [true, false] {
        block.attn.fused = fused;
        let output = block.forward_t(file.get("input").unwrap(), false);
        let what = format!("transformer block (fused {fused})");
        assert_close(&what, &output, file.get("output").unwrap(), FORWARD_TOL);
    }
}

#[test]
fn vision_transformer_matches_pytorch() {
    let file = fixture("vision_transformer");
    for (fused, onednn) in KERNELS {
        let (_vs, model) = small_model(&file, fused, onednn);
        let output = model
            .f_forward_t(file.get("input").unwrap(), false)
            .unwrap();
        let what = format!("vision transformer (fused {fused}, oneDNN {onednn})");
        assert_close(&what, &output, file.get("output").unwrap(), FORWARD_TOL);
    }
}

/// The notebook config (3.2M parameters), filled by the formula both sides share.
#[test]
fn notebook_config_matches_pytorch() {
    let file = fixture("notebook_forward");
    let vs = cpu_store();
    let mut model = built(|| VisionTransformer::new(&vs.root(), &file.config().unwrap())).unwrap();
    formula_fill(&vs);
    for (fused, onednn) in KERNELS {
        model.set_fused_attention(fused);
        model.set_onednn_linear(onednn);
        let output = tch::no_grad(|| model.f_forward_t(file.get("input").unwrap(), false)).unwrap();
        let what = format!("notebook config (fused {fused}, oneDNN {onednn})");
        assert_close(&what, &output, file.get("output").unwrap(), FORWARD_TOL);
    }
}

/// `ViTConfig::forward_flops` is what PyTorch's flop counter counts for one image through
/// timm's model, for the fixtures' small config (8x8 images) and the notebook's.
#[test]
fn forward_flops_match_pytorchs_flop_counter() {
    for name in ["vision_transformer", "notebook_forward"] {
        let file = fixture(name);
        let counted = file.get("flops_per_image").unwrap().double_value(&[]);
        assert_eq!(file.config().unwrap().forward_flops(), counted, "{name}");
    }
}

#[test]
fn gradients_match_pytorch() {
    assert_train_pass_matches("gradients");
}

/// Train mode with dropout 0.1 (every fixture above has none): with libtorch's mask sampler
/// and the generator seeded as PyTorch's was before the forward pass, the two draw the same
/// masks only if the dropout sites, their order and their shapes are PyTorch's (`pos_drop`,
/// then in each block the attention branch's and the MLP's two). A site left out, added or
/// moved draws other masks, or puts them elsewhere, and the logits differ.
#[test]
fn train_mode_dropout_matches_pytorch_mask_for_mask() {
    assert_eq!(fixture("dropout_gradients").config().unwrap().dropout, 0.1);
    assert_train_pass_matches("dropout_gradients");
}

/// One train-mode forward and backward pass of the small model against the fixture `name`:
/// logits, loss (label smoothing 0.1) and every gradient, with each combination of kernels.
/// The generator is seeded with the fixture's `seed`, where it has one, right before the
/// forward pass, and dropout draws its masks with libtorch's sampler, as PyTorch does.
fn assert_train_pass_matches(name: &str) {
    let file = fixture(name);
    let seed = file.get("seed").map(|seed| seed.int64_value(&[])).ok();
    let expected = with_prefix(&file, "grad");
    for (fused, onednn) in KERNELS {
        let (vs, mut model) = small_model(&file, fused, onednn);
        model.set_libtorch_dropout(true);
        let input = file.get("input").unwrap().copy().set_requires_grad(true);
        let logits = {
            let _rng = seed.map(seeded);
            model.f_forward_t(&input, true).unwrap()
        };
        let case = format!("fused {fused}, oneDNN {onednn}");
        let expected_logits = file.get("logits").unwrap();
        assert_close(
            &format!("logits ({case})"),
            &logits,
            expected_logits,
            TRAIN_TOL,
        );
        let loss = training_loss(&logits, file.get("labels").unwrap(), LABEL_SMOOTHING);
        assert_close(
            &format!("loss ({case})"),
            &loss,
            file.get("loss").unwrap(),
            TRAIN_TOL,
        );
        loss.backward();
        assert_gradients_match(&vs, &input, &expected, &case);
    }
}

/// After `backward()`: the gradient of every parameter of `vs` and of `input` against
/// `expected` (the fixture's `grad.*`), to TRAIN_TOL.
fn assert_gradients_match(
    vs: &nn::VarStore,
    input: &Tensor,
    expected: &std::collections::BTreeMap<String, Tensor>,
    case: &str,
) {
    let variables = vs.variables();
    assert_eq!(
        expected.len(),
        variables.len() + 1,
        "one gradient per parameter + input"
    );
    for (name, grad) in expected {
        let actual = match name.as_str() {
            "input" => input.grad(),
            _ => variables[name].grad(),
        };
        let what = format!("gradient of {name} ({case})");
        assert_close(&what, &actual, grad, TRAIN_TOL);
    }
}

/// `forward_with_attention_maps` (what `vit attention` draws its rollout and prediction
/// from) against timm's own attention probabilities for the same parameters and images,
/// layer by layer; its logits are those of the plain forward pass, to the bit.
#[test]
fn attention_maps_match_timms_and_logits_the_forward_pass() {
    let file = fixture("vision_transformer");
    let expected = with_prefix(&file, "attention");
    let input = file.get("input").unwrap();
    for (fused, onednn) in KERNELS {
        let (_vs, model) = small_model(&file, fused, onednn);
        let (logits, maps) = tch::no_grad(|| model.forward_with_attention_maps(input));
        let kernels = format!("fused {fused}, oneDNN {onednn}");
        assert_eq!(maps.len(), expected.len(), "one map per block");
        for (i, map) in maps.iter().enumerate() {
            let what = format!("attention map {i} ({kernels})");
            assert_close(&what, map, &expected[&i.to_string()], FORWARD_TOL);
        }
        let forward = tch::no_grad(|| model.forward_t(input, false));
        assert!(logits.equal(&forward), "logits ({kernels})");
    }
}

/// `forward_with_attention_maps` is an evaluation-mode pass for a model with dropout too
/// (here 0.5, on the fixture's parameters): two calls give the same maps and logits, to the
/// bit, and the logits are those of `forward_t(x, false)`. Dropout on in it would draw
/// other masks each call, and `vit attention` another figure and prediction each run.
#[test]
fn attention_maps_of_a_model_with_dropout_are_taken_without_it() {
    let file = fixture("vision_transformer");
    let config = ViTConfig {
        dropout: 0.5,
        ..file.config().unwrap()
    };
    let vs = cpu_store();
    let model = built(|| VisionTransformer::new(&vs.root(), &config)).unwrap();
    load_params(&file, &vs);
    let input = file.get("input").unwrap();
    // Held for the passes: where dropout is on, they draw from the global generator.
    let _rng = seeded(0);
    let (logits, maps) = tch::no_grad(|| model.forward_with_attention_maps(input));
    let (logits_again, maps_again) = tch::no_grad(|| model.forward_with_attention_maps(input));
    assert_eq!(maps.len(), maps_again.len());
    for (i, (map, again)) in maps.iter().zip(&maps_again).enumerate() {
        assert!(
            map.equal(again),
            "attention map {i} differs between two calls"
        );
    }
    assert!(
        logits.equal(&logits_again),
        "the logits differ between two calls"
    );
    let evaluation = tch::no_grad(|| model.forward_t(input, false));
    assert!(
        logits.equal(&evaluation),
        "the logits are not forward_t(x, false)'s"
    );
    // The dropout is there to leave out: in train mode it changes the logits.
    let training = tch::no_grad(|| model.forward_t(input, true));
    assert!(!training.equal(&evaluation), "dropout 0.5 changed nothing");
}

/// How timm initialises a parameter (`VisionTransformer.init_weights` and
/// `init_weights_vit_timm`, timm 1.0).
#[derive(Debug, Clone, Copy)]
enum Init {
    Zeros,
    Ones,
    /// `trunc_normal_(std, a=-2, b=2)` (bounds 100 std away at 0.02, so a normal) or
    /// `normal_(std)`.
    Normal(f64),
    /// U(-bound, bound): PyTorch's default Conv2d init, which timm leaves to the patch
    /// embedding.
    Uniform(f64),
}

/// The share of a normal distribution within one standard deviation of its mean,
/// erf(1/sqrt(2)).
const NORMAL_WITHIN_ONE_STD: f64 = 0.682_689_492_137_086;

/// How timm initialises the parameter `name` of a model of `config`.
fn timm_init(name: &str, config: &ViTConfig) -> Init {
    let patch_fan_in = config.in_channels * config.patch_size * config.patch_size;
    let is_norm = name.split('.').any(|part| part.starts_with("norm"));
    match name {
        "cls_token" => Init::Normal(1e-6),
        "pos_embed" => Init::Normal(0.02),
        "patch_embed.proj.weight" | "patch_embed.proj.bias" => {
            Init::Uniform(1.0 / (patch_fan_in as f64).sqrt())
        }
        _ if is_norm && name.ends_with(".weight") => Init::Ones,
        _ if name.ends_with(".bias") => Init::Zeros,
        // Every other weight is a Linear's: qkv, proj, fc1, fc2, head.
        _ => Init::Normal(0.02),
    }
}

/// A fresh notebook model's parameters, each against the distribution timm draws it from:
/// exact values for the constants; for the random ones the mean, the mean square (the
/// variance) and the share of values below a threshold (the shape: a normal has 68.3%
/// within one std, a uniform 50% within half its bound), each within 6 standard errors of
/// n draws: a right distribution fails each with a chance of about 1e-6 at most (the
/// smallest tensors' mean square has a heavier tail than a normal), whatever the seed.
#[test]
fn fresh_model_is_initialised_as_timm_does() {
    let config = ViTConfig::notebook();
    let vs = cpu_store();
    built(|| VisionTransformer::new(&vs.root(), &config)).unwrap();
    let mut linear_weights = 0;
    for (name, var) in vs.variables() {
        let values = var.detach().to_kind(Kind::Double);
        let n = values.numel() as f64;
        let init = timm_init(&name, &config);
        let (variance, fourth_moment, threshold, share) = match init {
            Init::Zeros | Init::Ones => {
                let constant = if matches!(init, Init::Ones) { 1.0 } else { 0.0 };
                assert!(
                    values.eq(constant).all().int64_value(&[]) == 1,
                    "{name}: every value is {constant}"
                );
                continue;
            }
            Init::Normal(std) => {
                if name.ends_with(".weight") {
                    linear_weights += 1;
                }
                (std * std, 3.0 * std.powi(4), std, NORMAL_WITHIN_ONE_STD)
            }
            Init::Uniform(bound) => {
                let largest = values.abs().max().double_value(&[]);
                // The float32 draws may round up to the bound.
                let bound_f32 = bound as f32 as f64;
                assert!(largest <= bound_f32, "{name}: |value| {largest} > {bound}");
                (bound * bound / 3.0, bound.powi(4) / 5.0, bound / 2.0, 0.5)
            }
        };
        let square = values.square().mean(Kind::Double).double_value(&[]);
        let sigma = ((fourth_moment - variance * variance) / n).sqrt();
        assert_within_6_sigma(&format!("{name}: mean square"), square, variance, sigma);
        let mean = values.mean(Kind::Double).double_value(&[]);
        assert_within_6_sigma(&format!("{name}: mean"), mean, 0.0, (variance / n).sqrt());
        let below = values.abs().lt(threshold).to_kind(Kind::Double);
        let below = below.mean(Kind::Double).double_value(&[]);
        let sigma = (share * (1.0 - share) / n).sqrt();
        assert_within_6_sigma(
            &format!("{name}: share below {threshold:e}"),
            below,
            share,
            sigma,
        );
    }
    // qkv, proj, fc1, fc2 in each block, and the head: no Linear was missed or miscounted.
    assert_eq!(linear_weights, 4 * config.num_layers + 1);
}

/// The blocks draw their initial weights from the seed first (which makes a seeded run's
/// weights, and so its recorded results, what they are): two models seeded alike that
/// differ only in their patch size, so in how many numbers their patch embedding and
/// positions draw, have the same blocks, to the bit.
#[test]
fn blocks_draw_their_initial_weights_first() {
    let blocks_of = |config: &ViTConfig| {
        let vs = cpu_store();
        built(|| VisionTransformer::new(&vs.root(), config)).unwrap();
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.retain(|(name, _)| name.starts_with("blocks."));
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        variables
    };
    let config = ViTConfig::tiny();
    let coarser = ViTConfig {
        patch_size: 2 * config.patch_size,
        ..config.clone()
    };
    let (blocks, coarser_blocks) = (blocks_of(&config), blocks_of(&coarser));
    assert_eq!(blocks.len(), coarser_blocks.len());
    for ((name, values), (_, coarser_values)) in blocks.iter().zip(&coarser_blocks) {
        assert!(values.equal(coarser_values), "{name} differs");
    }
}

/// timm's truncated normal clamps its draws to [-2, 2]: a uniform draw of exactly the lower
/// end (erfinv(-1) = -inf, about one in 2^24) gives -2, not an infinite weight (and NaN
/// logits from the first step). Seed 1's notebook model draws one; the test checks that
/// it does.
#[test]
fn truncated_normal_draws_at_the_end_are_clamped_to_the_bound() {
    let vs = cpu_store();
    {
        let _rng = seeded(1);
        VisionTransformer::new(&vs.root(), &ViTConfig::notebook()).unwrap();
    }
    let mut at_bound = 0;
    for (name, var) in vs.variables() {
        let largest = var.abs().max().double_value(&[]);
        assert!(largest <= 2.0, "{name}: |value| {largest} > 2");
        at_bound += var.eq(-2.0).sum(Kind::Int64).int64_value(&[]);
    }
    assert!(at_bound > 0, "seed 1 drew no value at the lower end");
}

/// Three of the trainer's own steps (zero_grad, loss, backward, clip_grad_norm(0.5), AdamW)
/// with a different learning rate each: losses, gradient norms and the final parameters,
/// for each AdamW kernel against PyTorch's same kernel (`foreach=False` / `fused=True`).
///
/// The key bias (the middle third of `qkv.bias`) has an exactly zero true gradient (the
/// softmax ignores a shift shared by all keys), so what it gets is rounding noise of size
/// 1e-10, which Adam's normalisation turns into steps of up to ~lr/10 in a direction set by
/// that noise. Its values after the steps depend on how each kernel rounds, and on the CPU
/// that wrote the fixture (PyTorch's own differ by 1.4e-3 between an AMD EPYC's fixture and
/// an Intel Xeon's), so they are held only to Adam's bound: each moved by at most the sum
/// of the steps' learning rates (|m̂| <= 1.01 sqrt(v̂) over three steps with these betas).
#[test]
fn adamw_steps_match_pytorch() {
    let file = fixture("adamw_steps");
    for (fused_attention, onednn) in KERNELS {
        for kernel in ["loop", "fused"] {
            let (vs, model) = small_model(&file, fused_attention, onednn);
            let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY).unwrap();
            optimizer.fused = kernel == "fused";
            let batch = fixture_batch(&file, Device::Cpu);
            let case =
                format!("{kernel} AdamW, fused attention {fused_attention}, oneDNN {onednn}");
            let expected = |key: String| file.get(&format!("{kernel}.{key}")).unwrap();
            for (step, lr) in STEP_LRS.into_iter().enumerate() {
                let output = train_step(&model, &mut optimizer, &batch, lr, STEP_OPTIONS);
                // An epoch sums the losses: one that kept its graph would keep every step's
                // activations alive until the epoch's end.
                assert!(!output.loss.requires_grad(), "loss {step} ({case})");
                let what = format!("loss {step} ({case})");
                assert_close(
                    &what,
                    &output.loss,
                    expected(format!("loss.{step}")),
                    TRAIN_TOL,
                );
                let what = format!("gradient norm {step} ({case})");
                let norm = expected(format!("grad_norm.{step}"));
                assert_close(&what, &output.grad_norm.unwrap(), norm, TRAIN_TOL);
            }
            let after = with_prefix(&file, &format!("{kernel}.after"));
            let variables = vs.variables();
            assert_eq!(after.len(), variables.len());
            let embed_dim = model.config.embed_dim;
            for (name, expected) in &after {
                let actual = &variables[name];
                let what = format!("{name} after 3 steps ({case})");
                if name.ends_with("attn.qkv.bias") {
                    for start in [0, 2 * embed_dim] {
                        let (actual, expected) = (
                            actual.narrow(0, start, embed_dim),
                            expected.narrow(0, start, embed_dim),
                        );
                        assert_close(&what, &actual, &expected, STEPS_TOL);
                    }
                    let before = file.get(&format!("param.{name}")).unwrap();
                    let key_bias = |bias: &Tensor| bias.narrow(0, embed_dim, embed_dim);
                    let what = format!("{name}'s key bias after 3 steps ({case})");
                    let steps_bound = 1.01 * STEP_LRS.iter().sum::<f64>();
                    assert_close(&what, &key_bias(actual), &key_bias(before), steps_bound);
                } else {
                    assert_close(&what, actual, expected, STEPS_TOL);
                }
            }
        }
    }
}

/// A mixed batch's predictions are counted right against each image's own label (the
/// train accuracy of metrics.csv), also where the image mixed into it weighs more in its
/// soft targets.
#[test]
fn a_mixed_batch_counts_its_predictions_against_its_own_labels() {
    let file = fixture("adamw_steps");
    let (vs, model) = small_model(&file, true, false);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY).unwrap();
    let input = file.get("input").unwrap();
    let num_classes = model.config.num_classes;
    // Labelled with the model's own answers, every prediction is right. The model has no
    // dropout: this forward pass is the step's.
    let labels = tch::no_grad(|| model.forward_t(input, true)).argmax(-1, false);
    let other = (&labels + 1).remainder(num_classes);
    let targets = labels.one_hot(num_classes) * 0.3 + other.one_hot(num_classes) * 0.7;
    let batch = TrainBatch {
        images: input.shallow_clone(),
        labels: labels.shallow_clone(),
        soft_targets: Some(targets),
    };
    let output = train_step(&model, &mut optimizer, &batch, 1e-3, STEP_OPTIONS);
    assert_eq!(output.correct.int64_value(&[]), labels.size()[0]);
}

/// A training step runs the model in train mode: with dropout, its loss is that of the
/// fixture's train-mode pass, with the masks PyTorch drew, not that of the model without
/// dropout.
#[test]
fn a_training_step_draws_dropout_masks() {
    let file = fixture("dropout_gradients");
    let (vs, mut model) = small_model(&file, true, false);
    model.set_libtorch_dropout(true);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY).unwrap();
    let batch = fixture_batch(&file, Device::Cpu);
    let seed = file.get("seed").unwrap().int64_value(&[]);
    let output = {
        let _rng = seeded(seed);
        train_step(&model, &mut optimizer, &batch, 1e-3, STEP_OPTIONS)
    };
    let expected = file.get("loss").unwrap();
    assert_close("loss of the step", &output.loss, expected, TRAIN_TOL);
}

/// `--clip-grad 0` turns clipping off: a step moves the weights exactly as one under a
/// limit that no gradient reaches, and reports no gradient norm.
#[test]
fn a_clip_grad_of_0_leaves_the_gradients_as_they_are() {
    let file = fixture("adamw_steps");
    let batch = fixture_batch(&file, Device::Cpu);
    let step = |clip_grad| {
        let (vs, model) = small_model(&file, true, false);
        let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY).unwrap();
        let options = StepOptions {
            clip_grad,
            ..STEP_OPTIONS
        };
        let output = train_step(&model, &mut optimizer, &batch, 1e-3, options);
        (vs, output)
    };
    let (off, off_output) = step(0.0);
    let (unreached, unreached_output) = step(1e9);
    let norm = unreached_output.grad_norm.unwrap().double_value(&[]);
    assert!(norm > 0.0 && norm < 1e9, "gradient norm {norm}");
    let unreached = unreached.variables();
    for (name, weights) in off.variables() {
        assert!(weights.equal(&unreached[&name]), "{name}");
    }
    assert!(off_output.grad_norm.is_none());
}

/// `torch.nn.utils.clip_grad_norm_` over parameters that have no gradient returns a norm of
/// 0 and changes nothing; vit's must do the same, not fail in the multi-tensor norm.
#[test]
fn clipping_without_gradients_gives_a_norm_of_zero() {
    let vs = cpu_store();
    let weight = vs.root().ones("weight", &[3]);
    let norm = vit_tch::optim::clip_grad_norm(std::iter::once(&weight), 0.5);
    assert_eq!(norm.double_value(&[]), 0.0);
    assert!(!weight.grad().defined());
}

/// Gradients whose norm is under the limit are left exactly as they are (PyTorch's
/// coefficient is clamped to 1), not scaled up to the limit.
#[test]
fn clipping_leaves_gradients_under_the_limit_as_they_are() {
    let vs = cpu_store();
    let weight = vs.root().ones("weight", &[2]);
    // The gradient of 0.1 w0 + 0.2 w1: [0.1, 0.2], of norm 0.22.
    (&weight * Tensor::from_slice(&[0.1f32, 0.2]))
        .sum(Kind::Float)
        .backward();
    let before = weight.grad().copy();
    let norm = vit_tch::optim::clip_grad_norm(std::iter::once(&weight), 1.0);
    let expected_norm = (0.1f64.powi(2) + 0.2f64.powi(2)).sqrt();
    assert!((norm.double_value(&[]) - expected_norm).abs() < 1e-7);
    assert!(
        weight.grad().equal(&before),
        "{:?} became {:?}",
        Vec::<f32>::try_from(&before).unwrap(),
        Vec::<f32>::try_from(weight.grad()).unwrap()
    );
}

/// The learning rate of every step is PyTorch's `LinearLR` warm-up (from base_lr /
/// warmup_steps to base_lr at step warmup_steps - 1) followed by `CosineAnnealingLR` down
/// to 0 at total_steps, as `SequentialLR` chains them.
#[test]
fn learning_rate_is_pytorchs_linear_warmup_then_cosine_annealing() {
    // (warm-up steps, total steps): a short warm-up, the training tests' one epoch of 12
    // steps in 48, and none.
    let cases = [(3usize, 10usize), (12, 48), (0, 7)];
    let code = format!(
        r#"
import torch, warnings
from torch.optim import lr_scheduler as s
warnings.simplefilter("ignore")
for warmup, total in {cases:?}:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    cosine = s.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=0.0)
    schedule = cosine if warmup == 0 else s.SequentialLR(
        opt, [s.LinearLR(opt, 1 / warmup, 1.0, total_iters=warmup - 1), cosine],
        milestones=[warmup])
    lrs = []
    for step in range(total + 1):
        lrs.append(repr(opt.param_groups[0]["lr"]))
        opt.step()
        schedule.step()
    print(" ".join(lrs))
"#
    );
    let output = common::run_python(std::path::Path::new("."), &code);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), cases.len());
    for ((warmup, total), line) in cases.into_iter().zip(lines) {
        let pytorch: Vec<f64> = line.split(' ').map(|lr| lr.parse().unwrap()).collect();
        assert_eq!(pytorch.len(), total + 1);
        for (step, expected) in pytorch.into_iter().enumerate() {
            let actual = vit_tch::optim::learning_rate(0.5, step, warmup, total);
            assert!(
                (actual - expected).abs() <= 1e-12,
                "step {step} of {total} ({warmup} warm-up): vit {actual}, PyTorch {expected}"
            );
        }
    }
}

/// A mixed batch (MixUp/CutMix) is trained on the cross-entropy against its soft targets,
/// -sum(targets * log_softmax(logits)) averaged over the batch, not on its labels.
#[test]
fn a_mixed_batch_is_trained_on_its_soft_targets() {
    let file = fixture("adamw_steps");
    let (vs, model) = small_model(&file, true, false);
    let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY).unwrap();
    let (input, labels) = (file.get("input").unwrap(), file.get("labels").unwrap());
    let num_classes = model.config.num_classes;
    // 70% of each image's class, 30% of the previous image's.
    let targets =
        labels.one_hot(num_classes) * 0.7 + labels.roll([1], [0]).one_hot(num_classes) * 0.3;
    // The model has no dropout: this forward pass is the step's.
    let logits = tch::no_grad(|| model.forward_t(input, true));
    let expected = (-(&targets * logits.log_softmax(-1, Kind::Float)))
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
        .mean(Kind::Float);
    let on_labels = training_loss(&logits, labels, LABEL_SMOOTHING);
    let batch = TrainBatch {
        images: input.shallow_clone(),
        labels: labels.shallow_clone(),
        soft_targets: Some(targets),
    };
    let output = train_step(&model, &mut optimizer, &batch, 1e-3, STEP_OPTIONS);
    assert_close(
        "loss on the soft targets",
        &output.loss,
        &expected,
        FORWARD_TOL,
    );
    let gap = (&output.loss - on_labels).abs().double_value(&[]);
    assert!(
        gap > 1e-2,
        "the loss on the labels is within {gap} of the soft targets'"
    );
}
