"""Writes `tests/fixtures/rollout.safetensors`, the golden numbers for attention rollout.

    .venv/bin/python tests/reference/rollout.py

Attention rollout (Abnar and Zuidema 2020, "Quantifying Attention Flow in Transformers"),
as `vit attention` computes it: for each layer average the heads, add the identity for the
residual connection and renormalise the rows; multiply the layers, the later one on the
left; keep the class token's row (token 0) over the patches (tokens 1..).

Tensors (3 layers, batch 2, 2 heads, 1 class token + 4 patches):
- `attn.<l>`: float32 [2, 2, 5, 5], random row-stochastic (softmax of scaled normals);
- `rollout`: float64 [2, 4], computed in float64 from the float32 maps;
- `last_heads`: float32 [2, 2, 4], the last layer's class-token rows over the patches.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

LAYERS, BATCH, HEADS, TOKENS = 3, 2, 2, 5
OUT = Path(__file__).resolve().parents[1] / "fixtures" / "rollout.safetensors"


def rollout(maps):
    joint = None
    for attn in maps:
        a = attn.mean(dim=1)  # [B, T, T]
        a = a + torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint[:, 0, 1:]


def main():
    torch.manual_seed(20)
    maps = [
        torch.softmax(2.0 * torch.randn(BATCH, HEADS, TOKENS, TOKENS), dim=-1)
        for _ in range(LAYERS)
    ]
    expected = rollout([m.double() for m in maps])
    tensors = {f"attn.{i}": m.contiguous() for i, m in enumerate(maps)}
    tensors["rollout"] = expected.contiguous()
    tensors["last_heads"] = maps[-1][:, :, 0, 1:].contiguous()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata={"layers": str(LAYERS)})
    print(f"wrote {OUT}")
    print("rollout:", expected)


if __name__ == "__main__":
    main()
