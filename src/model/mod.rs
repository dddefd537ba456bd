//! The notebook's four TODO cells, one file each, plus the hyperparameter cell.
//!
//! Every parameter lives at the path timm's `VisionTransformer.state_dict()` uses
//! (`blocks.0.attn.qkv.weight`, ...), so checkpoints move between tch and PyTorch as is.

mod config;
mod multi_head_self_attention;
mod patch_embedding;
mod transformer_block;
mod vision_transformer;

pub use config::{ViTConfig, PRESETS};
pub use multi_head_self_attention::{scaled_dot_product_attention, MultiHeadSelfAttention};
pub use patch_embedding::PatchEmbedding;
pub use transformer_block::{Mlp, TransformerBlock};
pub use vision_transformer::VisionTransformer;

use tch::{nn, Kind, Tensor};

/// timm's `trunc_normal_(std=std, a=-2, b=2)`: inverse-CDF sampling of N(0, std^2)
/// truncated to [-2, 2] (absolute bounds, as timm calls it), with PyTorch's algorithm.
pub fn trunc_normal(shape: &[i64], std: f64, device: tch::Device) -> Tensor {
    let (lower, upper) = (-2.0, 2.0);
    let cdf = |x: f64| (1.0 + scalar_erf(x / std / std::f64::consts::SQRT_2)) / 2.0;
    let (lo, up) = (2.0 * cdf(lower) - 1.0, 2.0 * cdf(upper) - 1.0);
    Tensor::empty(shape, (Kind::Float, device))
        .uniform_(lo, up)
        .erfinv_()
        .g_mul_scalar_(std * std::f64::consts::SQRT_2)
        .clamp_(lower, upper)
}

/// erf on a scalar through libtorch, so no extra maths crate is needed.
fn scalar_erf(x: f64) -> f64 {
    Tensor::from(x).erf().double_value(&[])
}

/// A Linear layer with timm's ViT initialisation: weight ~ trunc_normal(std 0.02), bias 0.
pub fn linear(path: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let weight = path.var_copy(
        "weight",
        &trunc_normal(&[out_dim, in_dim], 0.02, path.device()),
    );
    let bias = path.zeros("bias", &[out_dim]);
    nn::Linear {
        ws: weight,
        bs: Some(bias),
    }
}

/// A LayerNorm over the last dimension with timm's eps (1e-6) and ones/zeros init.
pub fn layer_norm(path: nn::Path, dim: i64) -> nn::LayerNorm {
    let config = nn::LayerNormConfig {
        eps: 1e-6,
        ..Default::default()
    };
    nn::layer_norm(path, vec![dim], config)
}
