//! Notebook cell 2: `MultiHeadSelfAttention(embed_dim, num_heads)`.

use super::Linear;
use tch::{nn, nn::Module, nn::ModuleT, Tensor};

/// Multi-head self-attention with one fused qkv projection (timm's `Attention`).
#[derive(Debug)]
pub struct MultiHeadSelfAttention {
    pub(super) qkv: Linear,
    pub(super) proj: Linear,
    num_heads: i64,
    head_dim: i64,
    /// Multiplies q k^T before the softmax; 1/sqrt(head_dim) unless a test changes it.
    pub scale: f64,
    /// libtorch's fused `scaled_dot_product_attention` (flash / memory-efficient kernels)
    /// instead of the explicit softmax(q k^T) v; both compute the same function.
    pub fused: bool,
    /// Dropout on the attention probabilities while training (timm's `attn_drop`).
    pub attn_dropout: f64,
}

impl MultiHeadSelfAttention {
    /// Parameters: `qkv.{weight,bias}` [3 embed_dim, embed_dim] / [3 embed_dim],
    /// `proj.{weight,bias}` [embed_dim, embed_dim] / `[embed_dim]`.
    /// `embed_dim` must be divisible by `num_heads` (checked by `ViTConfig::validate`).
    pub fn new(path: nn::Path, embed_dim: i64, num_heads: i64) -> Self {
        let head_dim = embed_dim / num_heads;
        Self {
            qkv: Linear::new(&path / "qkv", embed_dim, 3 * embed_dim),
            proj: Linear::new(&path / "proj", embed_dim, embed_dim),
            num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            fused: true,
            attn_dropout: 0.0,
        }
    }

    /// [B, N, embed_dim] -> (q, k, v), each [B, num_heads, N, head_dim].
    fn split_heads(&self, tokens: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (batch, num_tokens, _) = tokens.size3().expect("attention input is [B, N, C]");
        let qkv = self
            .qkv
            .forward(tokens)
            .reshape([batch, num_tokens, 3, self.num_heads, self.head_dim])
            .permute([2, 0, 3, 1, 4]);
        (qkv.get(0), qkv.get(1), qkv.get(2))
    }

    /// The attention probabilities softmax(q k^T * scale):
    /// [B, N, embed_dim] -> [B, num_heads, N, N].
    pub fn attention_weights(&self, tokens: &Tensor) -> Tensor {
        let (query, key, _) = self.split_heads(tokens);
        attention_probabilities(&query, &key, self.scale)
    }
}

impl ModuleT for MultiHeadSelfAttention {
    /// [B, N, embed_dim] -> [B, N, embed_dim]
    fn forward_t(&self, tokens: &Tensor, train: bool) -> Tensor {
        let (batch, num_tokens, embed_dim) = tokens.size3().expect("attention input is [B, N, C]");
        let (query, key, value) = self.split_heads(tokens);
        let dropout = if train { self.attn_dropout } else { 0.0 };
        scaled_dot_product_attention(&query, &key, &value, self.scale, dropout, self.fused)
            .transpose(1, 2)
            .reshape([batch, num_tokens, embed_dim])
            .apply(&self.proj)
    }
}

/// softmax(q k^T * scale) v, on [B, num_heads, N, head_dim] inputs and output, with
/// `dropout` applied to the attention probabilities (0 outside training).
pub fn scaled_dot_product_attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    scale: f64,
    dropout: f64,
    fused: bool,
) -> Tensor {
    if fused {
        Tensor::scaled_dot_product_attention(
            query,
            key,
            value,
            None::<Tensor>,
            dropout,
            false,
            scale,
            false,
        )
    } else {
        attention_probabilities(query, key, scale)
            .dropout(dropout, dropout > 0.0)
            .matmul(value)
    }
}

/// softmax(q k^T * scale) over the keys: q, k [B, num_heads, N, head_dim] ->
/// [B, num_heads, N, N].
fn attention_probabilities(query: &Tensor, key: &Tensor, scale: f64) -> Tensor {
    // Scaling q first (as timm does) keeps the explicit path closest to PyTorch's numbers.
    (query * scale)
        .matmul(&key.transpose(-2, -1))
        .softmax(-1, None::<tch::Kind>)
}
