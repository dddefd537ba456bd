//! The notebook's four TODO cells, one file each, plus the hyperparameter cell and the
//! layers they share: `Linear` (most of its products in oneDNN on AMD's CPUs), LayerNorm, and
//! `Dropout` (its own mask sampler on the CPU).
//!
//! Every parameter lives at the path timm's `VisionTransformer.state_dict()` uses
//! (`blocks.0.attn.qkv.weight`, ...), so checkpoints move between tch and PyTorch as is.

mod config;
mod dropout;
mod memory;
mod multi_head_self_attention;
mod patch_embedding;
mod transformer_block;
mod vision_transformer;

pub use config::ViTConfig;
pub(crate) use dropout::splitmix64_finalizer;
pub use dropout::{fill_keep_mask, keep_mask, Dropout, CHUNK as DROPOUT_CHUNK};
pub use multi_head_self_attention::{scaled_dot_product_attention, MultiHeadSelfAttention};
pub use patch_embedding::PatchEmbedding;
pub use transformer_block::TransformerBlock;
pub use vision_transformer::VisionTransformer;

use tch::{nn, nn::Module, Device, Kind, Tensor};

/// How many parameters the store's variables hold (every one, whatever module it is in).
pub fn parameter_total(vs: &nn::VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}

/// timm's `trunc_normal_(std=std, a=-2, b=2)`: inverse-CDF sampling of N(0, std^2)
/// truncated to [-2, 2] (absolute bounds, as timm calls it), with PyTorch's algorithm.
/// As in PyTorch, a uniform draw of exactly `lo` (CDF(-2) is 0 in f64 at std 0.02) gives
/// erfinv(-1) = -inf, clamped to -2: about one weight in 2^24 lies at the bound.
/// Float32 of `shape`, on `device`.
fn trunc_normal(shape: &[i64], std: f64, device: tch::Device) -> Tensor {
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

/// A linear layer (`nn.Linear`) with timm's ViT initialisation: weight ~
/// trunc_normal(std 0.02), bias 0.
#[derive(Debug)]
struct Linear {
    /// [out_dim, in_dim]
    weight: Tensor,
    /// `[out_dim]`
    bias: Tensor,
    /// On the CPU, the forward product and the input's gradient run in oneDNN
    /// (`ffi::onednn_linear`) rather than libtorch's `linear` (MKL's GEMM, which PyTorch
    /// runs); the same function either way.
    /// By default where that is faster: see [`onednn_linear_by_default`].
    onednn: bool,
}

impl Linear {
    /// Parameters: `weight` [out_dim, in_dim], `bias` `[out_dim]`.
    fn new(path: nn::Path, in_dim: i64, out_dim: i64) -> Self {
        Self {
            weight: path.var_copy(
                "weight",
                &trunc_normal(&[out_dim, in_dim], 0.02, path.device()),
            ),
            bias: path.zeros("bias", &[out_dim]),
            onednn: onednn_linear_by_default(),
        }
    }
}

impl Module for Linear {
    /// [..., in_dim] -> [..., out_dim]
    fn forward(&self, xs: &Tensor) -> Tensor {
        if self.onednn && xs.device() == Device::Cpu {
            crate::ffi::onednn_linear(xs, &self.weight, Some(&self.bias)).expect("linear layer")
        } else {
            xs.linear(&self.weight, Some(&self.bias))
        }
    }
}

/// Whether CPU linear layers run in oneDNN unless told otherwise (the forward product and
/// the input gradient; the weight gradient is MKL's either way): on AMD's x86 CPUs, where
/// libtorch has oneDNN's operator. Measured (README, "Speed and memory"): on an AMD EPYC
/// Zen 4, oneDNN's products ran 1.0 to 2.2 times as fast as MKL's, which libtorch's
/// `linear` calls; on a Zen 3, 0.94 to 1.33 times, by the host's load, and the model
/// trained 1.09 to 1.17 times as fast; on an Intel Xeon, where MKL is Intel's own, MKL's
/// were as fast or faster, and training ran 1.39 times as fast with libtorch's `linear`.
/// Other CPUs (unmeasured) run what PyTorch runs.
pub fn onednn_linear_by_default() -> bool {
    static DEFAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        crate::runtime::cpu_vendor().as_deref() == Some("AuthenticAMD")
            && crate::ffi::onednn_linear_available()
    })
}

/// A LayerNorm over the last dimension with timm's eps (1e-6) and ones/zeros init.
fn layer_norm(path: nn::Path, dim: i64) -> nn::LayerNorm {
    let config = nn::LayerNormConfig {
        eps: 1e-6,
        ..Default::default()
    };
    nn::layer_norm(path, vec![dim], config)
}

#[cfg(test)]
mod tests {
    /// The vendor CPUID gives is the one Linux reports, and the linear layers' default
    /// follows it: oneDNN on AMD's CPUs alone.
    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn the_linear_kernel_follows_the_cpu_vendor() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let vendor = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("vendor_id"))
            .and_then(|rest| rest.split(':').nth(1))
            .map(str::trim)
            .unwrap();
        assert_eq!(crate::runtime::cpu_vendor().as_deref(), Some(vendor));
        let amd = vendor == "AuthenticAMD" && crate::ffi::onednn_linear_available();
        assert_eq!(super::onednn_linear_by_default(), amd);
    }
}
