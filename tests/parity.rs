//! The Rust modules against the PyTorch reference (`tests/reference/vit_reference.py`),
//! on the fixtures `tests/reference/make_fixtures.py` writes: forward passes (fused and
//! explicit attention), gradients, and three clipped AdamW steps; the whole model with its
//! linear layers in oneDNN and in libtorch's `linear`.

mod common;

use common::{assert_close, fixture, formula_fill, load_params, with_prefix};
use tch::{nn, nn::Module, nn::ModuleT, Tensor};
use vit_tch::checkpoint::TensorFile;
use vit_tch::cli::Precision;
use vit_tch::model::{MultiHeadSelfAttention, PatchEmbedding, TransformerBlock, VisionTransformer};
use vit_tch::optim::AdamW;
use vit_tch::train::{train_step, training_loss, StepOptions, TrainBatch};

const FORWARD_TOL: f64 = 1e-5;
const TRAIN_TOL: f64 = 1e-4;
const LABEL_SMOOTHING: f64 = 0.1;
const STEP_OPTIONS: StepOptions = StepOptions {
    label_smoothing: LABEL_SMOOTHING,
    clip_grad: 0.5,
    precision: Precision::Fp32,
};
const WEIGHT_DECAY: f64 = 0.05;
const STEP_LRS: [f64; 3] = [1e-3, 5e-3, 2e-3];

fn cpu_store() -> nn::VarStore {
    nn::VarStore::new(tch::Device::Cpu)
}

/// The small model of `file`'s config with the fixture's parameters, fused or explicit
/// attention, linear layers in oneDNN or in libtorch's `linear`.
fn small_model(file: &TensorFile, fused: bool, onednn: bool) -> (nn::VarStore, VisionTransformer) {
    let vs = cpu_store();
    let mut model = VisionTransformer::new(&vs.root(), &file.config().unwrap()).unwrap();
    model.set_fused_attention(fused);
    model.set_onednn_linear(onednn);
    load_params(file, &vs);
    (vs, model)
}

/// Every combination of fused attention and oneDNN linear layers.
const KERNELS: [(bool, bool); 4] = [(true, true), (true, false), (false, true), (false, false)];

fn loss(model: &VisionTransformer, file: &TensorFile, input: &Tensor) -> Tensor {
    let logits = model.f_forward_t(input, true).unwrap();
    training_loss(&logits, file.get("labels").unwrap(), LABEL_SMOOTHING)
}

#[test]
fn patch_embedding_matches_pytorch() {
    let file = fixture("patch_embedding");
    let c = file.config().unwrap();
    let vs = cpu_store();
    let module = PatchEmbedding::new(
        vs.root(),
        c.image_size,
        c.patch_size,
        c.in_channels,
        c.embed_dim,
    );
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
    let mut module = MultiHeadSelfAttention::new(vs.root(), c.embed_dim, c.num_heads);
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
        TransformerBlock::new(vs.root(), c.embed_dim, c.num_heads, c.mlp_dim, c.dropout);
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
    let mut model = VisionTransformer::new(&vs.root(), &file.config().unwrap()).unwrap();
    formula_fill(&vs);
    for (fused, onednn) in KERNELS {
        model.set_fused_attention(fused);
        model.set_onednn_linear(onednn);
        let output = tch::no_grad(|| model.f_forward_t(file.get("input").unwrap(), false)).unwrap();
        let what = format!("notebook config (fused {fused}, oneDNN {onednn})");
        assert_close(&what, &output, file.get("output").unwrap(), FORWARD_TOL);
    }
}

#[test]
fn gradients_match_pytorch() {
    let file = fixture("gradients");
    let expected = with_prefix(&file, "grad");
    for (fused, onednn) in KERNELS {
        let (vs, model) = small_model(&file, fused, onednn);
        let input = file.get("input").unwrap().copy().set_requires_grad(true);
        let loss = loss(&model, &file, &input);
        assert_close("loss", &loss, file.get("loss").unwrap(), TRAIN_TOL);
        loss.backward();
        let variables = vs.variables();
        assert_eq!(
            expected.len(),
            variables.len() + 1,
            "one gradient per parameter + input"
        );
        for (name, grad) in &expected {
            let actual = match name.as_str() {
                "input" => input.grad(),
                _ => variables[name].grad(),
            };
            let what = format!("gradient of {name} (fused {fused}, oneDNN {onednn})");
            assert_close(&what, &actual, grad, TRAIN_TOL);
        }
    }
}

/// Three of the trainer's own steps (zero_grad, loss, backward, clip_grad_norm(0.5), AdamW)
/// with a different learning rate each: losses, gradient norms and the final parameters,
/// for each AdamW kernel against PyTorch's same kernel (`foreach=False` / `fused=True`).
///
/// The key bias (the middle third of `qkv.bias`) has an exactly zero true gradient (the
/// softmax ignores a shift shared by all keys), so what it gets is rounding noise of size
/// 1e-10, which Adam's normalisation turns into steps of up to ~lr/10 in a direction set by
/// that noise. The explicit attention path with libtorch's `linear` does PyTorch's
/// operations one for one and reproduces even that noise, so it is compared everywhere; the
/// fused attention kernel and oneDNN's matrix products round differently, so with either
/// of them the key bias is left out.
#[test]
fn adamw_steps_match_pytorch() {
    let file = fixture("adamw_steps");
    let input = file.get("input").unwrap();
    for (fused_attention, onednn) in KERNELS {
        for kernel in ["loop", "fused"] {
            let (vs, model) = small_model(&file, fused_attention, onednn);
            let mut optimizer = AdamW::new(&vs, WEIGHT_DECAY).unwrap();
            optimizer.fused = kernel == "fused";
            let batch = TrainBatch {
                images: input.shallow_clone(),
                labels: file.get("labels").unwrap().shallow_clone(),
                soft_targets: None,
            };
            let case =
                format!("{kernel} AdamW, fused attention {fused_attention}, oneDNN {onednn}");
            let expected = |key: String| file.get(&format!("{kernel}.{key}")).unwrap();
            for (step, lr) in STEP_LRS.into_iter().enumerate() {
                let output = train_step(&model, &mut optimizer, &batch, lr, STEP_OPTIONS);
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
                if (fused_attention || onednn) && name.ends_with("attn.qkv.bias") {
                    for start in [0, 2 * embed_dim] {
                        let (actual, expected) = (
                            actual.narrow(0, start, embed_dim),
                            expected.narrow(0, start, embed_dim),
                        );
                        assert_close(&what, &actual, &expected, TRAIN_TOL);
                    }
                } else {
                    assert_close(&what, actual, expected, TRAIN_TOL);
                }
            }
        }
    }
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
