"""The notebook's four Vision Transformer modules in plain PyTorch.

This is the reference the Rust port is checked against (`make_fixtures.py`) and the model
the side-by-side benchmark runs. Parameter names equal timm's `VisionTransformer`
state_dict keys, so a state_dict loads into either with `strict=True`.

Attention is the explicit softmax(q k^T) v by default (what the fixtures are made with);
`fused_attention=True` uses `torch.nn.functional.scaled_dot_product_attention` instead,
like the Rust port's default, so a benchmark can run the fused kernel on both sides. The
two compute the same function and have the same parameters.
"""

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6
# The notebook's Normalize(mean, std) constants.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class PatchEmbedding(nn.Module):
    """[B, in_channels, H, W] -> [B, num_patches, embed_dim] with one strided Conv2d."""

    def __init__(self, image_size, patch_size, in_channels, embed_dim):
        super().__init__()
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class MultiHeadSelfAttention(nn.Module):
    """softmax(q k^T / sqrt(head_dim)) v over `num_heads` heads, with one fused qkv Linear.

    `fused=True` computes it with `F.scaled_dot_product_attention`."""

    def __init__(self, embed_dim, num_heads, fused=False):
        super().__init__()
        self.fused = fused
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x):
        batch, num_tokens, embed_dim = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, embed_dim))
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, num_tokens, embed_dim)
        return self.proj(out)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> dropout -> fc2 -> dropout."""

    def __init__(self, embed_dim, mlp_dim, dropout):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, embed_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm: x = x + dropout(attn(norm1(x))); x = x + mlp(norm2(x))."""

    def __init__(self, embed_dim, num_heads, mlp_dim, dropout, fused_attention=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.attn = MultiHeadSelfAttention(embed_dim, num_heads, fused=fused_attention)
        self.norm2 = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(embed_dim, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """[B, in_channels, image_size, image_size] -> logits [B, num_classes]."""

    def __init__(
        self,
        image_size,
        patch_size,
        in_channels,
        embed_dim,
        num_heads,
        mlp_dim,
        num_layers,
        num_classes,
        dropout=0.1,
        fused_attention=False,
    ):
        super().__init__()
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_channels, embed_dim)
        num_tokens = self.patch_embed.num_patches + 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 1e-6)
        self.pos_embed = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(1, num_tokens, embed_dim), std=0.02)
        )
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_dim, dropout, fused_attention)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        patches = self.patch_embed(x)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, patches], dim=1) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])

    def set_fused_attention(self, fused):
        """Switches every block between the explicit and the fused attention."""
        for block in self.blocks:
            block.attn.fused = fused


# The presets of src/model/config.rs (`--config notebook|small|tiny`).
PRESETS = {
    "notebook": dict(
        image_size=32,
        patch_size=4,
        in_channels=3,
        embed_dim=256,
        num_heads=8,
        mlp_dim=512,
        num_layers=6,
        num_classes=100,
        dropout=0.1,
    ),
}
PRESETS["small"] = {
    **PRESETS["notebook"],
    **dict(embed_dim=128, num_heads=4, mlp_dim=256, num_layers=4, num_classes=10, dropout=0.0),
}
PRESETS["tiny"] = {
    **PRESETS["notebook"],
    **dict(embed_dim=32, num_heads=2, mlp_dim=64, num_layers=2, num_classes=10, dropout=0.0),
}


NO_DECAY = ("cls_token", "pos_embed")


def param_groups(model, weight_decay):
    """vit's AdamW groups: decay on the weight matrices, none on biases, norms and the
    class and position embeddings."""
    named = sorted(model.named_parameters())
    decay = [p for k, p in named if p.dim() >= 2 and k not in NO_DECAY]
    no_decay = [p for k, p in named if not (p.dim() >= 2 and k not in NO_DECAY)]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def timm_model(config, fused_attention=True):
    """timm's VisionTransformer with the same architecture and parameter names as
    `VisionTransformer(**config)`. The notebook's dropout sits where timm's pos_drop and
    proj_drop (attention projection, both MLP dropouts) are; timm's drop_rate is a head
    dropout the notebook does not have."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    model = TimmViT(
        img_size=config["image_size"],
        patch_size=config["patch_size"],
        in_chans=config["in_channels"],
        num_classes=config["num_classes"],
        embed_dim=config["embed_dim"],
        depth=config["num_layers"],
        num_heads=config["num_heads"],
        # timm builds int(embed_dim * mlp_ratio) hidden units: mlp_dim / embed_dim alone
        # rounds one short for some pairs (14 and 61), half a unit more never does.
        mlp_ratio=(config["mlp_dim"] + 0.5) / config["embed_dim"],
        qkv_bias=True,
        pos_drop_rate=config["dropout"],
        proj_drop_rate=config["dropout"],
        attn_drop_rate=0.0,
        drop_rate=0.0,
    )
    for block in model.blocks:
        block.attn.fused_attn = fused_attention
        assert block.mlp.fc1.out_features == config["mlp_dim"], block.mlp.fc1
    return model
