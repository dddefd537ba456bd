"""The Python half of `tests/roundtrip.rs`: checkpoints move between vit-tch and timm.

    roundtrip.py RUST_CHECKPOINT RUST_IO TIMM_CHECKPOINT TIMM_IO

1. loads RUST_CHECKPOINT (written by `checkpoint::save`) into timm's VisionTransformer
   with strict=True and checks its logits on RUST_IO's `input` against RUST_IO's
   `logits` (exits non-zero with the error if they differ by more than 1e-5);
2. writes a timm model (timm's initialisation plus noise, so that no two LayerNorms or
   biases are alike) to TIMM_CHECKPOINT with the nine hyperparameters as `config`
   metadata, and an input with its logits to TIMM_IO, for the Rust side to compare.
"""

import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from vit_reference import PRESETS, timm_model

TOLERANCE = 1e-5
# The nine names of the notebook's VisionTransformer(...) (the `config` metadata keys).
HYPERPARAMETERS = tuple(PRESETS["notebook"])


def main(rust_checkpoint, rust_io, timm_checkpoint, timm_io):
    with safe_open(rust_checkpoint, "pt") as f:
        stored = json.loads(f.metadata()["config"])
    config = {name: stored[name] for name in HYPERPARAMETERS}
    model = timm_model(config).eval()
    model.load_state_dict(load_file(rust_checkpoint), strict=True)
    io = load_file(rust_io)
    with torch.no_grad():
        error = (model(io["input"]) - io["logits"]).abs().max().item()
    if not error <= TOLERANCE:
        sys.exit(f"timm's logits for the Rust checkpoint differ by {error:e} > {TOLERANCE:e}")
    print(f"Rust checkpoint in timm: max abs error {error:e}")

    torch.manual_seed(1)
    model = timm_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    size = config["image_size"]
    images = torch.randn(2, config["in_channels"], size, size)
    with torch.no_grad():
        logits = model(images)
    save_file(model.state_dict(), timm_checkpoint, metadata={"config": json.dumps(config)})
    save_file({"input": images, "logits": logits}, timm_io)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
