"""Writes the PyTorch fixtures that `tests/parity.rs` compares the Rust port against.

    .venv/bin/python tests/reference/make_fixtures.py

Every file is a safetensors file of float32 tensors (labels and the seed int64,
`flops_per_image` float64) with the model hyperparameters as JSON under the `config`
metadata key. Parameters are stored as `param.<state_dict key>`.

- `patch_embedding`, `multi_head_self_attention`, `transformer_block`,
  `vision_transformer`: one module of the small config, `input` and its eval `output`;
  `vision_transformer` also holds each block's eval-mode attention probabilities
  `attention.<i>` [batch, heads, tokens, tokens], taken from timm's explicit attention path
  (what its `attn_drop` receives) with the same parameters;
- `notebook_forward`: the notebook config, with every parameter filled by `formula_fill`
  (the Rust tests repeat the formula), so only `input` and `output` are stored;
- `vision_transformer` and `notebook_forward` also hold `flops_per_image` (float64), what
  `torch.utils.flop_counter` counts for one image's forward pass through timm's model;
- `gradients`: cross-entropy (label smoothing 0.1) of the small model in train mode:
  `input`, `labels`, `logits`, `loss`, `grad.<key>` and `grad.input`;
- `adamw_steps`: three steps of clip_grad_norm_(0.5) + AdamW with decay and no-decay
  groups and a different lr each step, once with each AdamW kernel (KERNEL: `loop` for
  foreach=False, `fused` for fused=True): `KERNEL.loss.<i>`, `KERNEL.grad_norm.<i>`,
  `KERNEL.after.<key>`;
- `dropout_gradients`: `gradients` with dropout 0.1, its masks drawn right after
  `torch.manual_seed(seed)`, and `seed` (int64).
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vit_reference import (
    PRESETS,
    param_groups,
    timm_model,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TransformerBlock,
    VisionTransformer,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

SMALL = dict(
    image_size=8,
    patch_size=4,
    in_channels=3,
    embed_dim=16,
    num_heads=4,
    mlp_dim=32,
    num_layers=2,
    num_classes=5,
    dropout=0.0,
)
NOTEBOOK = PRESETS["notebook"]
BATCH = 2
LABEL_SMOOTHING = 0.1
# Below the gradient norms (1.0 to 6.1) so clipping acts, and not 1.0, where a reciprocal times
# max_norm and a division by the norm round alike.
MAX_GRAD_NORM = 0.5
WEIGHT_DECAY = 0.05
STEP_LRS = (1e-3, 5e-3, 2e-3)
DROPOUT = {**SMALL, "dropout": 0.1}
DROPOUT_SEED = 7


def is_layer_norm_weight(name):
    """`norm1.weight`, `norm2.weight`, `norm.weight`: LayerNorm scales."""
    parts = name.split(".")
    return parts[-1] == "weight" and parts[-2].startswith("norm")


@torch.no_grad()
def randomize(module):
    """Random parameters with no symmetry left (distinct LayerNorms, non-zero biases and
    positions), so that any wiring mistake changes the output."""
    for name, p in sorted(module.named_parameters()):
        p.copy_(torch.randn_like(p) * 0.3 + (1.0 if is_layer_norm_weight(name) else 0.0))


@torch.no_grad()
def formula_fill(module):
    """The i-th parameter in sorted key order: 0.02 sin(0.1 arange(numel) + i), in float64
    then cast to float32; LayerNorm weights get 1 added."""
    for i, (name, p) in enumerate(sorted(module.named_parameters())):
        values = 0.02 * torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.1 + i)
        if is_layer_norm_weight(name):
            values = values + 1.0
        p.copy_(values.to(torch.float32).reshape(p.shape))


def params(module):
    return {f"param.{k}": v.detach().clone() for k, v in module.state_dict().items()}


def save(name, config, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, FIXTURES / f"{name}.safetensors", metadata={"config": json.dumps(config)})


def images(config):
    size = config["image_size"]
    return torch.randn(BATCH, config["in_channels"], size, size)


def random_model(config):
    model = VisionTransformer(**config)
    randomize(model)
    return model


def module_fixtures():
    c = SMALL
    num_tokens = (c["image_size"] // c["patch_size"]) ** 2 + 1
    modules = {
        "patch_embedding": (
            PatchEmbedding(c["image_size"], c["patch_size"], c["in_channels"], c["embed_dim"]),
            images(c),
        ),
        "multi_head_self_attention": (
            MultiHeadSelfAttention(c["embed_dim"], c["num_heads"]),
            torch.randn(BATCH, num_tokens, c["embed_dim"]),
        ),
        "transformer_block": (
            TransformerBlock(c["embed_dim"], c["num_heads"], c["mlp_dim"], c["dropout"]),
            torch.randn(BATCH, num_tokens, c["embed_dim"]),
        ),
        "vision_transformer": (VisionTransformer(**c), images(c)),
    }
    for name, (module, x) in modules.items():
        randomize(module)
        module.eval()
        with torch.no_grad():
            output = module(x)
        tensors = {**params(module), "input": x, "output": output}
        if name == "vision_transformer":
            check_against_timm(module, x)
            tensors.update(timm_attention_maps(module, x))
            tensors.update(timm_forward_flops(c))
        save(name, c, tensors)


@torch.random.fork_rng(devices=[])
def check_against_timm(reference, x):
    """The reference's state_dict loads into timm's VisionTransformer with strict=True and
    gives the same logits. (timm's own initialisation draws from a forked generator, so
    the fixtures after it do not depend on how many numbers it draws.)"""
    timm = timm_model(SMALL).eval()
    timm.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(timm(x), reference(x), rtol=0, atol=1e-5)


def notebook_fixture():
    model = VisionTransformer(**NOTEBOOK)
    formula_fill(model)
    model.eval()
    x = images(NOTEBOOK)
    with torch.no_grad():
        output = model(x)
    save("notebook_forward", NOTEBOOK, {"input": x, "output": output, **timm_forward_flops(NOTEBOOK)})


def labels():
    return torch.randint(0, SMALL["num_classes"], (BATCH,))


def gradient_fixture(name, config, seed=None):
    """Cross-entropy of a random model of `config` in train mode, and its gradients. With a
    `seed`, set right before the forward pass: a port that seeds libtorch's CPU generator
    alike and draws its dropout masks with libtorch's sampler, at the same sites in the same
    order, draws the same masks."""
    model = random_model(config)
    start = params(model)
    model.train()
    x, y = images(config), labels()
    x_grad = x.clone().requires_grad_()
    seeded = {}
    if seed is not None:
        torch.manual_seed(seed)
        seeded = {"seed": torch.tensor(seed, dtype=torch.int64)}
    logits = model(x_grad)
    loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
    loss.backward()
    grads = {f"grad.{k}": p.grad for k, p in model.named_parameters()}
    tensors = {**start, "input": x, "labels": y, **seeded, "logits": logits, "loss": loss}
    save(name, config, {**tensors, **grads, "grad.input": x_grad.grad})


def adamw_fixture():
    model = random_model(SMALL)
    start = params(model)
    x, y = images(SMALL), labels()
    record = {}
    for kernel in ("loop", "fused"):
        model.load_state_dict({k[len("param.") :]: v for k, v in start.items()})
        model.train()
        optimizer = torch.optim.AdamW(
            param_groups(model, WEIGHT_DECAY),
            betas=(0.9, 0.999),
            eps=1e-8,
            **({"fused": True} if kernel == "fused" else {"foreach": False}),
        )
        for step, lr in enumerate(STEP_LRS):
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            assert norm > MAX_GRAD_NORM, "the fixture should exercise clipping"
            optimizer.step()
            record[f"{kernel}.loss.{step}"] = loss.detach()
            record[f"{kernel}.grad_norm.{step}"] = norm
        record.update({f"{kernel}.after.{k}": v.clone() for k, v in model.state_dict().items()})
    save("adamw_steps", SMALL, {**start, "input": x, "labels": y, **record})


@torch.random.fork_rng(devices=[])
def timm_attention_maps(reference, x):
    """Each block's attention probabilities for `reference` (eval) on `x`, as timm computes
    them: a forward hook on `attn_drop`, which its explicit path applies to them."""
    timm = timm_model(SMALL, fused_attention=False).eval()
    timm.load_state_dict(reference.state_dict(), strict=True)
    maps = {}
    for i, block in enumerate(timm.blocks):
        block.attn.attn_drop.register_forward_hook(
            lambda _module, _args, output, i=i: maps.__setitem__(f"attention.{i}", output.clone())
        )
    with torch.no_grad():
        torch.testing.assert_close(timm(x), reference(x), rtol=0, atol=1e-5)
    assert len(maps) == SMALL["num_layers"]
    return maps


@torch.random.fork_rng(devices=[])
def timm_forward_flops(config):
    """`flops_per_image`: what `torch.utils.flop_counter` counts for one image's eval forward
    pass through timm's model of `config`, on its explicit attention path (the counter has
    no formula for the fused CPU kernel, and would leave attention's products out)."""
    from torch.utils.flop_counter import FlopCounterMode

    timm = timm_model(config, fused_attention=False).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        timm(torch.zeros(1, config["in_channels"], config["image_size"], config["image_size"]))
    return {"flops_per_image": torch.tensor(counter.get_total_flops(), dtype=torch.float64)}


def main():
    torch.manual_seed(0)
    FIXTURES.mkdir(exist_ok=True)
    module_fixtures()
    notebook_fixture()
    gradient_fixture("gradients", SMALL)
    adamw_fixture()
    gradient_fixture("dropout_gradients", DROPOUT, seed=DROPOUT_SEED)
    for path in sorted(FIXTURES.glob("*.safetensors")):
        print(f"{path.relative_to(FIXTURES.parent.parent)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
