//! Notebook cell 1: `PatchEmbedding(image_size, patch_size, in_channels, embed_dim)`.

use tch::{nn, nn::Module, Tensor};

/// Splits an image into non-overlapping patches and projects each to `embed_dim`, with
/// one Conv2d whose kernel and stride are the patch size (timm's `PatchEmbed`).
#[derive(Debug)]
pub struct PatchEmbedding {
    proj: nn::Conv2D,
    /// (image_size / patch_size)^2, the patches per image (the class token not counted).
    pub num_patches: i64,
}

impl PatchEmbedding {
    /// Parameters: `proj.weight` [embed_dim, in_channels, patch_size, patch_size],
    /// `proj.bias` `[embed_dim]`.
    pub fn new(
        path: nn::Path,
        image_size: i64,
        patch_size: i64,
        in_channels: i64,
        embed_dim: i64,
    ) -> Self {
        // PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)) is U(-b, b) with
        // b = 1/sqrt(fan_in), for the weight and the bias alike.
        let bound = 1.0 / ((in_channels * patch_size * patch_size) as f64).sqrt();
        let uniform = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let config = nn::ConvConfig {
            stride: patch_size,
            ws_init: uniform,
            bs_init: uniform,
            ..Default::default()
        };
        let proj = nn::conv2d(path / "proj", in_channels, embed_dim, patch_size, config);
        Self {
            proj,
            num_patches: (image_size / patch_size).pow(2),
        }
    }
}

impl Module for PatchEmbedding {
    /// [B, in_channels, H, W] -> [B, num_patches, embed_dim]
    fn forward(&self, images: &Tensor) -> Tensor {
        self.proj.forward(images).flatten(2, -1).transpose(1, 2)
    }
}
