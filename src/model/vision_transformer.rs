//! Notebook cell 4: `VisionTransformer(image_size, patch_size, in_channels, embed_dim,
//! num_heads, mlp_dim, num_layers, num_classes, dropout=0.1)`.

use super::{Dropout, Linear, PatchEmbedding, TransformerBlock, ViTConfig};
use anyhow::{ensure, Result};
use tch::{nn, nn::Module, nn::ModuleT, Tensor};

/// Patch embedding, class token, positional embedding, `num_layers` pre-norm blocks, a
/// final LayerNorm and a linear head on the class token (timm's `VisionTransformer`).
#[derive(Debug)]
pub struct VisionTransformer {
    pub config: ViTConfig,
    patch_embed: PatchEmbedding,
    /// [1, 1, embed_dim]
    cls_token: Tensor,
    /// [1, num_patches + 1, embed_dim], the class token's position first.
    pos_embed: Tensor,
    pos_drop: Dropout,
    blocks: Vec<TransformerBlock>,
    norm: nn::LayerNorm,
    head: Linear,
}

impl VisionTransformer {
    /// Creates the model's parameters under `path` with timm's default initialisation:
    /// `patch_embed.*`, `cls_token` [1, 1, embed_dim], `pos_embed` [1, num_patches + 1,
    /// embed_dim], `blocks.{i}.*`, `norm.*` and `head.*` [num_classes, embed_dim] /
    /// `[num_classes]`. Fails on a config whose sizes do not fit together.
    pub fn new(path: &nn::Path, config: &ViTConfig) -> Result<Self> {
        config.validate()?;
        let ViTConfig {
            embed_dim,
            num_heads,
            mlp_dim,
            dropout,
            ..
        } = *config;
        let device = path.device();
        // The blocks draw from the seed first: this order is what makes a seeded run's
        // weights, and so its recorded results, what they are.
        let blocks = (0..config.num_layers)
            .map(|i| {
                TransformerBlock::new(path / "blocks" / i, embed_dim, num_heads, mlp_dim, dropout)
            })
            .collect();
        let patch_embed = PatchEmbedding::new(
            path / "patch_embed",
            config.image_size,
            config.patch_size,
            config.in_channels,
            embed_dim,
        );
        // One position per patch, plus the class token's.
        let positions = patch_embed.num_patches + 1;
        Ok(Self {
            config: config.clone(),
            patch_embed,
            cls_token: path.var_copy(
                "cls_token",
                &(Tensor::randn([1, 1, embed_dim], (tch::Kind::Float, device)) * 1e-6),
            ),
            pos_embed: path.var_copy(
                "pos_embed",
                &super::trunc_normal(&[1, positions, embed_dim], 0.02, device),
            ),
            pos_drop: Dropout::new(dropout),
            blocks,
            norm: super::layer_norm(path / "norm", embed_dim),
            head: Linear::new(path / "head", embed_dim, config.num_classes),
        })
    }

    /// Stochastic depth rising linearly from 0 at the first block to `rate` at the last.
    pub fn set_drop_path_rate(&mut self, rate: f64) {
        let last = (self.blocks.len().max(2) - 1) as f64;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.drop_path = rate * i as f64 / last;
        }
    }

    /// Dropout on the attention probabilities of every block while training.
    pub fn set_attn_dropout(&mut self, prob: f64) {
        for block in &mut self.blocks {
            block.attn.attn_dropout = prob;
        }
    }

    /// Chooses fused (libtorch SDPA) or explicit softmax attention in every block.
    pub fn set_fused_attention(&mut self, fused: bool) {
        for block in &mut self.blocks {
            block.attn.fused = fused;
        }
    }

    /// Draws every dropout mask with libtorch's sampler (as `torch.nn.Dropout`), or with
    /// the faster CPU one (the default; see `Dropout`).
    pub fn set_libtorch_dropout(&mut self, libtorch_masks: bool) {
        self.pos_drop.libtorch_masks = libtorch_masks;
        for block in &mut self.blocks {
            block.proj_drop.libtorch_masks = libtorch_masks;
            block.mlp.drop.libtorch_masks = libtorch_masks;
        }
    }

    /// Runs every linear layer's matrix products on the CPU in oneDNN (the default on AMD's
    /// CPUs), or in libtorch's `linear` as PyTorch does (see `Linear`).
    pub fn set_onednn_linear(&mut self, onednn: bool) {
        self.head.onednn = onednn;
        for block in &mut self.blocks {
            for linear in [
                &mut block.attn.qkv,
                &mut block.attn.proj,
                &mut block.mlp.fc1,
                &mut block.mlp.fc2,
            ] {
                linear.onednn = onednn;
            }
        }
    }

    /// Whether the blocks run libtorch's fused attention (see `set_fused_attention`).
    pub fn fused_attention(&self) -> bool {
        self.blocks.iter().all(|block| block.attn.fused)
    }

    /// Whether dropout masks come from libtorch's sampler (see `set_libtorch_dropout`).
    pub fn libtorch_dropout(&self) -> bool {
        self.pos_drop.libtorch_masks
    }

    /// Whether CPU linear layers run in oneDNN (see `set_onednn_linear`).
    pub fn onednn_linear(&self) -> bool {
        self.head.onednn
    }

    /// Checks that `images` is a float [B, in_channels, image_size, image_size] batch.
    pub fn check_input(&self, images: &Tensor) -> Result<()> {
        let ViTConfig {
            in_channels,
            image_size,
            ..
        } = self.config;
        let size = images.size();
        ensure!(
            size.len() == 4 && size[1..] == [in_channels, image_size, image_size],
            "the model expects images of shape [batch, {in_channels}, {image_size}, {image_size}], got {size:?}"
        );
        ensure!(
            images.is_floating_point(),
            "the model expects float images, got {:?}",
            images.kind()
        );
        Ok(())
    }

    /// Like `forward_t`, but a wrong input shape is an error instead of a panic.
    pub fn f_forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(images)?;
        Ok(self.forward_t(images, train))
    }

    /// The token sequence entering the first block (patches with the class token in
    /// front, plus positions, then dropout):
    /// [B, in_channels, image_size, image_size] -> [B, num_patches + 1, embed_dim].
    fn embed(&self, images: &Tensor, train: bool) -> Tensor {
        let patches = self.patch_embed.forward(images);
        let cls = self.cls_token.expand([patches.size()[0], -1, -1], false);
        (Tensor::cat(&[cls, patches], 1) + &self.pos_embed).apply_t(&self.pos_drop, train)
    }

    /// The logits and every block's attention probabilities, first block first (for
    /// attention rollout), in evaluation mode: [B, in_channels, image_size, image_size] ->
    /// (logits [B, num_classes], num_layers x [B, num_heads, num_patches + 1,
    /// num_patches + 1]). One pass through the blocks, each of which also computes its
    /// attention probabilities explicitly (the forward may use the fused kernel, which
    /// does not give them).
    pub fn forward_with_attention_maps(&self, images: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut tokens = self.embed(images, false);
        let mut maps = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            maps.push(block.attention_weights(&tokens));
            tokens = tokens.apply_t(block, false);
        }
        (self.classify(&tokens), maps)
    }

    /// The head on the class token after the last block: [B, num_patches + 1, embed_dim]
    /// -> logits [B, num_classes].
    fn classify(&self, tokens: &Tensor) -> Tensor {
        tokens.apply(&self.norm).select(1, 0).apply(&self.head)
    }
}

impl ModuleT for VisionTransformer {
    /// [B, in_channels, image_size, image_size] -> logits [B, num_classes]
    fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        let mut tokens = self.embed(images, train);
        for block in &self.blocks {
            tokens = tokens.apply_t(block, train);
        }
        self.classify(&tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Panics unless every layer of `model` is set as given: attention dropout `prob`,
    /// fused attention, dropout masks from libtorch's sampler, linear layers in oneDNN.
    fn assert_every_layer(model: &VisionTransformer, prob: f64, on: [bool; 3]) {
        let [fused, libtorch_masks, onednn] = on;
        assert_eq!(model.pos_drop.libtorch_masks, libtorch_masks);
        assert_eq!(model.head.onednn, onednn);
        for (i, block) in model.blocks.iter().enumerate() {
            assert_eq!(block.attn.attn_dropout, prob, "block {i}");
            assert_eq!(block.attn.fused, fused, "block {i}");
            assert_eq!(block.proj_drop.libtorch_masks, libtorch_masks, "block {i}");
            assert_eq!(block.mlp.drop.libtorch_masks, libtorch_masks, "block {i}");
            let linears = [
                &block.attn.qkv,
                &block.attn.proj,
                &block.mlp.fc1,
                &block.mlp.fc2,
            ];
            for (j, linear) in linears.into_iter().enumerate() {
                assert_eq!(linear.onednn, onednn, "block {i}, linear layer {j}");
            }
        }
    }

    /// A fresh model has the documented defaults (no attention dropout, fused attention,
    /// the fast CPU dropout sampler, the CPU's linear kernel), and each setter reaches every
    /// block and every layer of its kind in it (the head too): `--attn-dropout` or
    /// `--libtorch-linear` applied to some layers only would leave no trace in the outputs
    /// of a short run.
    #[test]
    fn every_setter_reaches_every_layer() {
        let config = ViTConfig {
            num_layers: 3,
            ..ViTConfig::tiny()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = VisionTransformer::new(&vs.root(), &config).unwrap();
        let onednn = crate::model::onednn_linear_by_default();
        assert_every_layer(&model, 0.0, [true, false, onednn]);
        for on in [true, false] {
            let prob = if on { 0.25 } else { 0.0 };
            model.set_attn_dropout(prob);
            model.set_fused_attention(on);
            model.set_libtorch_dropout(on);
            model.set_onednn_linear(on);
            assert_every_layer(&model, prob, [on; 3]);
        }
    }
}
