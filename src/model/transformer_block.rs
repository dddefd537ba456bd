//! Notebook cell 3: `TransformerBlock(embed_dim, num_heads, mlp_dim, dropout)`.

use super::{Dropout, Linear, MultiHeadSelfAttention};
use tch::{nn, nn::ModuleT, Tensor};

/// fc1 -> GELU (exact erf) -> dropout -> fc2 -> dropout (timm's `Mlp`).
#[derive(Debug)]
pub(super) struct Mlp {
    pub(super) fc1: Linear,
    pub(super) fc2: Linear,
    pub(super) drop: Dropout,
}

impl Mlp {
    /// Parameters: `fc1.weight` [mlp_dim, embed_dim], `fc1.bias` `[mlp_dim]`,
    /// `fc2.weight` [embed_dim, mlp_dim], `fc2.bias` `[embed_dim]`.
    pub(super) fn new(path: nn::Path, embed_dim: i64, mlp_dim: i64, dropout: f64) -> Self {
        Self {
            fc1: Linear::new(&path / "fc1", embed_dim, mlp_dim),
            fc2: Linear::new(&path / "fc2", mlp_dim, embed_dim),
            drop: Dropout::new(dropout),
        }
    }
}

impl ModuleT for Mlp {
    /// [B, N, embed_dim] -> [B, N, embed_dim]
    fn forward_t(&self, tokens: &Tensor, train: bool) -> Tensor {
        tokens
            .apply(&self.fc1)
            .gelu("none")
            .apply_t(&self.drop, train)
            .apply(&self.fc2)
            .apply_t(&self.drop, train)
    }
}

/// A pre-norm transformer encoder block:
/// x = x + drop_path(dropout(attn(norm1(x)))); x = x + drop_path(mlp(norm2(x))),
/// where drop_path (stochastic depth, off unless the recipe sets it) skips a branch for
/// whole samples.
#[derive(Debug)]
pub struct TransformerBlock {
    norm1: nn::LayerNorm,
    pub attn: MultiHeadSelfAttention,
    norm2: nn::LayerNorm,
    pub(super) mlp: Mlp,
    /// On the attention branch's output (timm's `proj_drop`).
    pub(super) proj_drop: Dropout,
    /// Stochastic depth: the probability of skipping each residual branch for a sample
    /// while training (0 = off).
    pub(super) drop_path: f64,
}

impl TransformerBlock {
    /// Parameters under `norm1`, `attn`, `norm2`, `mlp`.
    pub fn new(path: nn::Path, embed_dim: i64, num_heads: i64, mlp_dim: i64, dropout: f64) -> Self {
        Self {
            norm1: super::layer_norm(&path / "norm1", embed_dim),
            attn: MultiHeadSelfAttention::new(&path / "attn", embed_dim, num_heads),
            norm2: super::layer_norm(&path / "norm2", embed_dim),
            mlp: Mlp::new(&path / "mlp", embed_dim, mlp_dim, dropout),
            proj_drop: Dropout::new(dropout),
            drop_path: 0.0,
        }
    }

    /// The attention probabilities this block computes for `tokens`:
    /// [B, N, embed_dim] -> [B, num_heads, N, N].
    pub fn attention_weights(&self, tokens: &Tensor) -> Tensor {
        self.attn.attention_weights(&tokens.apply(&self.norm1))
    }
}

impl ModuleT for TransformerBlock {
    /// [B, N, embed_dim] -> [B, N, embed_dim]
    fn forward_t(&self, tokens: &Tensor, train: bool) -> Tensor {
        let attended = self
            .attn
            .forward_t(&tokens.apply(&self.norm1), train)
            .apply_t(&self.proj_drop, train);
        let tokens = tokens + drop_path(&attended, self.drop_path, train);
        let mlp_out = tokens.apply(&self.norm2).apply_t(&self.mlp, train);
        &tokens + drop_path(&mlp_out, self.drop_path, train)
    }
}

/// Zeroes a residual branch for a random subset of samples, scaling the rest by
/// 1/(1-prob) so the expectation is unchanged (timm's `drop_path`). [B, ...] -> [B, ...]
fn drop_path(branch: &Tensor, prob: f64, train: bool) -> Tensor {
    if !train || prob == 0.0 {
        return branch.shallow_clone();
    }
    let mut mask_shape = vec![1; branch.dim()];
    mask_shape[0] = branch.size()[0];
    let keep = Tensor::empty(mask_shape.as_slice(), (branch.kind(), branch.device()))
        .bernoulli_float_(1.0 - prob);
    branch * keep / (1.0 - prob)
}

#[cfg(test)]
mod tests {
    use super::drop_path;
    use tch::{Device, Kind, Tensor};

    /// One draw per sample: every token and feature of a sample is dropped or kept
    /// together (tests/regularization.rs sees only the class token of a whole model, where
    /// a mask drawn per token would pass).
    #[test]
    fn drop_path_keeps_or_drops_each_sample_whole() {
        const PROB: f64 = 0.5;
        let branch = Tensor::ones([64, 5, 3], (Kind::Float, Device::Cpu));
        let dropped = drop_path(&branch, PROB, true);
        assert_eq!(dropped.size(), branch.size());
        let per_sample = dropped.flatten(1, -1);
        let first = per_sample.narrow(1, 0, 1);
        assert!(
            per_sample.eq_tensor(&first).all().int64_value(&[]) == 1,
            "a sample's tokens and features drew different masks: {per_sample}"
        );
        let first = Vec::<f32>::try_from(first.flatten(0, -1)).unwrap();
        let kept = first.iter().filter(|&&value| value != 0.0).count();
        assert!(
            first.iter().all(|&value| value == 0.0 || value == 2.0),
            "{first:?}"
        );
        // 64 fair draws: all kept or all dropped has probability 2^-63.
        assert!(
            0 < kept && kept < first.len(),
            "{kept} of {} kept",
            first.len()
        );
    }
}
