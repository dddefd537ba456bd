//! The model's own regularisers for the strong recipe, on models whose parameters are set
//! by hand so that the output shows what each one did: stochastic depth (whole residual
//! branches dropped per sample and the survivors scaled, at rates rising linearly over the
//! blocks as in timm) and attention dropout (on the attention probabilities, while
//! training only, on both attention paths).
//!
//! libtorch's generator is global and the harness runs tests on parallel threads, so every
//! test that draws random numbers holds `common::seeded`'s guard from its seeding on.

mod common;

use common::{assert_binomial_count, assert_close, seeded};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
use vit_tch::model::{MultiHeadSelfAttention, ViTConfig, VisionTransformer};

/// Panics unless every element of `values` (there may be none) is within `tol` of `value`.
fn assert_all(what: &str, values: &Tensor, value: f64, tol: f64) {
    let error = if values.numel() == 0 {
        0.0
    } else {
        (values - value).abs().max().double_value(&[])
    };
    assert!(
        error <= tol,
        "{what}: max abs error {error:e} from {value} > {tol:e}"
    );
}

const LAYERS: i64 = 4;
/// The class token's features: an anchor that is always 1, one that is always 0, then two
/// per residual branch (attention, MLP) of each block.
const ANCHOR: i64 = 0;
const ZERO: i64 = 1;
const FEATURES: i64 = 2 + 4 * LAYERS;

/// The two features of block `block`'s attention branch (`mlp` false) or MLP branch.
fn branch_features(block: i64, mlp: bool) -> [i64; 2] {
    let first = 2 + 4 * block + if mlp { 2 } else { 0 };
    [first, first + 1]
}

/// A model whose every residual branch adds a constant, (1, 2) on features of its own, and
/// whose logits are the class token's features after the final LayerNorm (identity head).
/// The class token enters the first block as 1 on `ANCHOR` (its position embedding) and 0
/// elsewhere; every weight inside the blocks is 0, so each branch's output is its last bias,
/// whatever it is given.
fn branch_revealing_model() -> (nn::VarStore, VisionTransformer) {
    let config = ViTConfig {
        image_size: 4,
        patch_size: 4,
        in_channels: 1,
        embed_dim: FEATURES,
        num_heads: 1,
        mlp_dim: 4,
        num_layers: LAYERS,
        num_classes: FEATURES,
        dropout: 0.0,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = VisionTransformer::new(&vs.root(), &config).unwrap();
    let variables = vs.variables();
    tch::no_grad(|| {
        for var in variables.values() {
            let _ = var.shallow_clone().zero_();
        }
        let _ = variables["norm.weight"].shallow_clone().fill_(1.0);
        variables["head.weight"]
            .shallow_clone()
            .copy_(&Tensor::eye(FEATURES, (Kind::Float, Device::Cpu)));
        let _ = variables["pos_embed"].get(0).get(0).get(ANCHOR).fill_(1.0);
        for block in 0..LAYERS {
            for (mlp, bias) in [(false, "attn.proj.bias"), (true, "mlp.fc2.bias")] {
                let bias = &variables[&format!("blocks.{block}.{bias}")];
                for (value, feature) in branch_features(block, mlp).into_iter().enumerate() {
                    let _ = bias.get(feature).fill_(value as f64 + 1.0);
                }
            }
        }
    });
    (vs, model)
}

/// The class token's features before the final LayerNorm, from the logits: the norm
/// subtracts their mean and divides by one spread, which the always-0 and always-1 features
/// undo. [B, FEATURES] -> [B, FEATURES].
fn class_token_features(logits: &Tensor) -> Tensor {
    let zero = logits.narrow(1, ZERO, 1);
    let one = logits.narrow(1, ANCHOR, 1);
    (logits - &zero) / (one - zero)
}

/// `VisionTransformer::set_drop_path_rate(0.3)` over 4 blocks gives them timm's rates
/// (`linspace(0, 0.3, 4)`: 0, 0.1, 0.2, 0.3). In each sample, each branch is dropped whole
/// or kept whole and scaled by 1/(1 - p), as its two class-token features show (the logits
/// show no other token: a unit test in src/model/transformer_block.rs checks that every
/// token of a sample shares its draw): the scale shows the block's rate exactly, the share
/// of samples dropped the probability it is drawn with.
/// A block's two branches draw independently (timm's `drop_path1` and `drop_path2`), and
/// evaluation keeps every branch unscaled.
#[test]
fn stochastic_depth_drops_whole_branches_per_sample_at_rates_rising_to_the_last_block() {
    const RATE: f64 = 0.3;
    const SAMPLES: i64 = 10_000;
    let _rng = seeded(0);
    let (_vs, mut model) = branch_revealing_model();
    model.set_drop_path_rate(RATE);
    let images = Tensor::zeros([SAMPLES, 1, 4, 4], (Kind::Float, Device::Cpu));
    let features = tch::no_grad(|| class_token_features(&model.forward_t(&images, true)));
    let evaluated = tch::no_grad(|| class_token_features(&model.forward_t(&images, false)));
    for block in 0..LAYERS {
        let prob = RATE * block as f64 / (LAYERS - 1) as f64;
        let mut dropped = Vec::new();
        for mlp in [false, true] {
            let what = format!(
                "block {block}, {} branch",
                if mlp { "MLP" } else { "attention" }
            );
            let [first, second] = branch_features(block, mlp);
            let (first, second) = (features.select(1, first), features.select(1, second));
            assert_close(
                &format!("{what}: one mask per sample"),
                &second,
                &(&first * 2.0),
                1e-4,
            );
            let kept = first.gt(0.5);
            let drops = kept.logical_not();
            let scale = 1.0 / (1.0 - prob);
            let what_kept = format!("{what}: kept, scaled by 1/(1-{prob:.1})");
            assert_all(&what_kept, &first.masked_select(&kept), scale, 1e-4);
            assert_all(
                &format!("{what}: dropped"),
                &first.masked_select(&drops),
                0.0,
                1e-4,
            );
            assert_binomial_count(
                &what,
                drops.sum(Kind::Int64).int64_value(&[]) as usize,
                SAMPLES as usize,
                prob,
            );
            dropped.push(drops);

            let unscaled =
                evaluated.index_select(1, &Tensor::from_slice(&branch_features(block, mlp)));
            let expected = Tensor::from_slice(&[1.0f32, 2.0]).expand_as(&unscaled);
            assert_close(&format!("{what} in evaluation"), &unscaled, &expected, 1e-4);
        }
        let both = dropped[0]
            .logical_and(&dropped[1])
            .sum(Kind::Int64)
            .int64_value(&[]) as usize;
        assert_binomial_count(
            &format!("block {block}, both branches"),
            both,
            SAMPLES as usize,
            prob * prob,
        );
    }
}

/// A one-block model's block gets stochastic depth 0 (timm's `linspace(0, rate, 1)` is
/// [0]): a train-mode pass of a dropout-free model is then its evaluation pass. The rate
/// spread over `blocks - 1` gaps would divide by zero here and give the block NaN.
#[test]
fn a_single_block_gets_no_stochastic_depth() {
    let config = ViTConfig {
        num_layers: 1,
        ..ViTConfig::tiny()
    };
    let _rng = seeded(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = VisionTransformer::new(&vs.root(), &config).unwrap();
    model.set_drop_path_rate(0.3);
    let images = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let training = tch::no_grad(|| model.forward_t(&images, true));
    let evaluation = tch::no_grad(|| model.forward_t(&images, false));
    assert!(
        training.equal(&evaluation),
        "the only block dropped branches"
    );
}

const TOKENS: i64 = 16;

/// An attention module (one head of `TOKENS` dimensions) whose value and output
/// projections are the identity (their biases 0, as built), with random queries and keys, and the one-hot tokens
/// e_0..e_15 as its input: token i's output is then row i of the attention probabilities,
/// after dropout if any. Returns the module, its store and the input [samples, 16, 16].
fn probability_revealing_attention(samples: i64) -> (nn::VarStore, MultiHeadSelfAttention, Tensor) {
    let vs = nn::VarStore::new(Device::Cpu);
    let attn = MultiHeadSelfAttention::new(vs.root(), TOKENS, 1);
    let variables = vs.variables();
    let identity = Tensor::eye(TOKENS, (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        let qkv = &variables["qkv.weight"];
        qkv.narrow(0, 0, 2 * TOKENS).copy_(&Tensor::randn(
            [2 * TOKENS, TOKENS],
            (Kind::Float, Device::Cpu),
        ));
        qkv.narrow(0, 2 * TOKENS, TOKENS).copy_(&identity);
        variables["proj.weight"].shallow_clone().copy_(&identity);
    });
    let tokens = identity
        .unsqueeze(0)
        .expand([samples, TOKENS, TOKENS], false);
    (vs, attn, tokens)
}

/// With `attn_dropout` 0.4, training drops each attention probability with probability 0.4
/// and scales the rest by 1/0.6, on the fused path (libtorch's SDPA) and on the explicit
/// one; evaluation, and training with `attn_dropout` 0, leave the probabilities as they are.
#[test]
fn attention_dropout_drops_probabilities_while_training_only_on_both_paths() {
    const PROB: f64 = 0.4;
    const SAMPLES: i64 = 32;
    let _rng = seeded(1);
    let (_vs, mut attn, tokens) = probability_revealing_attention(SAMPLES);
    // [samples, 1 head, 16, 16] -> [samples, 16, 16], as the module's output lays it out.
    let probabilities = tch::no_grad(|| attn.attention_weights(&tokens)).squeeze_dim(1);
    for fused in [true, false] {
        attn.fused = fused;
        let forward =
            |attn: &MultiHeadSelfAttention, train| tch::no_grad(|| attn.forward_t(&tokens, train));
        attn.attn_dropout = 0.0;
        let what = format!("training without attention dropout (fused {fused})");
        assert_close(&what, &forward(&attn, true), &probabilities, 1e-5);
        attn.attn_dropout = PROB;
        let what = format!("evaluation (fused {fused})");
        assert_close(&what, &forward(&attn, false), &probabilities, 1e-5);

        // Each output is its probability times 0 or 1/(1 - p); softmax probabilities of
        // these logits are far from 0, so the ratio tells which.
        let ratio = forward(&attn, true) / &probabilities;
        let kept = ratio.gt(0.5);
        let drops = kept.logical_not();
        let what = format!("kept probabilities, scaled by 1/(1-p) (fused {fused})");
        assert_all(&what, &ratio.masked_select(&kept), 1.0 / (1.0 - PROB), 1e-4);
        let what = format!("dropped probabilities (fused {fused})");
        assert_all(&what, &ratio.masked_select(&drops), 0.0, 1e-4);
        let dropped = drops.sum(Kind::Int64).int64_value(&[]) as usize;
        let what = format!("attention dropout (fused {fused})");
        assert_binomial_count(&what, dropped, ratio.numel(), PROB);
    }
}

/// Attention dropout drops probabilities before they weight the values, on both paths: with
/// every token's value the same vector v (value weights 0, bias v), token i's output is
/// (the sum of its kept probabilities / (1 - p)) * v, a multiple of v; dropping the
/// attention output instead (which the one-hot test above cannot tell from this) would
/// zero single features of it.
#[test]
fn attention_dropout_drops_probabilities_before_they_weight_the_values() {
    const PROB: f64 = 0.4;
    const SAMPLES: i64 = 8;
    let _rng = seeded(2);
    let (vs, mut attn, tokens) = probability_revealing_attention(SAMPLES);
    let value = Tensor::arange_start(1, TOKENS + 1, (Kind::Float, Device::Cpu));
    let variables = vs.variables();
    tch::no_grad(|| {
        let _ = variables["qkv.weight"]
            .narrow(0, 2 * TOKENS, TOKENS)
            .zero_();
        variables["qkv.bias"]
            .narrow(0, 2 * TOKENS, TOKENS)
            .copy_(&value);
    });
    attn.attn_dropout = PROB;
    for fused in [true, false] {
        attn.fused = fused;
        // [samples, 16 tokens, 16 features]: each token's multiple of v, feature by feature.
        let multiples = tch::no_grad(|| attn.forward_t(&tokens, true)) / &value;
        let spread = (multiples.amax([-1], false) - multiples.amin([-1], false))
            .max()
            .double_value(&[]);
        assert!(
            spread <= 1e-4,
            "a token's output is not a multiple of v (spread {spread:e}, fused {fused})"
        );
        // Kept probabilities scaled by 1/(1-p) rarely sum to exactly 1: dropout acted.
        let moved = (multiples - 1.0).abs().max().double_value(&[]);
        assert!(moved > 0.01, "no probability was dropped (fused {fused})");
    }
}
