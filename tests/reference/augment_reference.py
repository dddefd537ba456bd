"""Writes `tests/fixtures/augment_ops.safetensors`, torchvision's augmentation ops on a few
fixed uint8 images, which `tests/augment.rs` compares `vit_tch::data::augment` against.

    .venv/bin/python tests/reference/augment_reference.py

Every case calls torchvision's own `_apply_op` (what RandAugment and AutoAugment call) on
the uint8 batch `input` [3,3,32,32] with one fixed magnitude, in its units; the output of
case i is `case<i>`. The one metadata entry, `reference` (one, as safetensors writes several
in no fixed order, and the file must come out the same each time), is a JSON object:
`cases` lists `[op, magnitude, interpolation]`; then torchvision's tables, `cifar10_policy`,
AutoAugment's 25 CIFAR-10 sub-policies as `[[op, p, bin], [op, p, bin]]`;
`randaugment_ops`, RandAugment's op list in its order; and `magnitudes`,
`_augmentation_space(num_bins, (height, width))` of both (`{op: [magnitude of each bin,
signed]}`) for each `[num_bins, height, width]` of `SPACES`. Also the evaluation transform at other sizes than CIFAR's: `resize<size>` is the input's
first image (the noise) through ToTensor's scaling, `Resize((size, size))` (bilinear,
antialiased) and Normalize with the notebook's constants.
The images: uniform noise, a low-contrast image (values 100..139, for autocontrast and
equalize), and one with a constant channel and a smooth gradient. They are CIFAR's size:
equalize leaves an image of fewer than about 255 pixels a channel as it is, and every
case but Identity must change the batch.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchvision.transforms import (
    AutoAugment,
    AutoAugmentPolicy,
    InterpolationMode,
    Normalize,
    RandAugment,
    Resize,
)
from torchvision.transforms.autoaugment import _apply_op
from vit_reference import MEAN, STD

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

CASES = [
    ("Identity", 0.0, "nearest"),
    ("Brightness", 0.5, "nearest"),
    ("Brightness", -0.4, "nearest"),
    ("Color", 0.7, "nearest"),
    ("Color", -0.3, "nearest"),
    ("Contrast", 0.6, "nearest"),
    ("Contrast", -0.5, "nearest"),
    ("Sharpness", 0.9, "nearest"),
    ("Sharpness", -0.6, "nearest"),
    # The largest magnitudes (bin 30 of 31), factors 0.1 and 1.9: at 1.9 the float results
    # leave [0, 255], and are clamped (not wrapped) before the cast to uint8.
    ("Brightness", 0.9, "nearest"),
    ("Brightness", -0.9, "nearest"),
    ("Color", 0.9, "nearest"),
    ("Color", -0.9, "nearest"),
    ("Contrast", 0.9, "nearest"),
    ("Contrast", -0.9, "nearest"),
    ("Sharpness", -0.9, "nearest"),
    ("Posterize", 4.0, "nearest"),
    ("Posterize", 2.0, "nearest"),
    ("Solarize", 128.0, "nearest"),
    ("Solarize", 40.0, "nearest"),
    ("AutoContrast", 0.0, "nearest"),
    ("Equalize", 0.0, "nearest"),
    ("Invert", 0.0, "nearest"),
    ("Rotate", 30.0, "nearest"),
    ("Rotate", -17.0, "nearest"),
    ("Rotate", 23.0, "bilinear"),
    ("ShearX", 0.3, "nearest"),
    ("ShearX", -0.2, "bilinear"),
    ("ShearY", 0.25, "nearest"),
    ("TranslateX", 5.4, "nearest"),
    ("TranslateX", -3.0, "nearest"),
    ("TranslateY", 4.0, "nearest"),
]


SIZE = 32
# Both bin counts the recipes use (AutoAugment's 10, RandAugment's default 31), on images
# wider and taller than square: translation scales with the side it moves along.
SPACES = ((10, 32, 48), (31, 48, 32))
# Down, up by 1.5, and up by a factor that is not a fraction of small integers.
RESIZES = (16, 48, 53)


def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    low = torch.randint(100, 140, (3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    ramp = torch.arange(SIZE, dtype=torch.float32)
    grad = torch.stack(
        [
            torch.full((SIZE, SIZE), 77.0),
            (ramp[:, None] * 7 + ramp[None, :]).clamp(0, 255),
            (200 - ramp[None, :] * 5).expand(SIZE, SIZE),
        ]
    ).to(torch.uint8)
    return torch.stack([noise, low, grad])


def magnitude_spaces() -> list:
    """`[num_bins, height, width, {op: [magnitudes, signed]}]` of RandAugment and AutoAugment
    merged (they agree on the ops both have)."""
    spaces = []
    for num_bins, height, width in SPACES:
        ops = {}
        for augment in (RandAugment(), AutoAugment(AutoAugmentPolicy.CIFAR10)):
            for op, (magnitudes, signed) in augment._augmentation_space(
                num_bins, (height, width)
            ).items():
                # Ops without a magnitude have a scalar 0.0 for every bin.
                magnitudes = torch.as_tensor(magnitudes, dtype=torch.float64)
                row = [magnitudes.expand(num_bins).tolist(), bool(signed)]
                assert ops.setdefault(op, row) == row, op
        spaces.append([num_bins, height, width, ops])
    return spaces


def main() -> None:
    x = images()
    tensors = {"input": x}
    for i, (op, magnitude, interp) in enumerate(CASES):
        mode = InterpolationMode.NEAREST if interp == "nearest" else InterpolationMode.BILINEAR
        out = _apply_op(x.clone(), op, magnitude, interpolation=mode, fill=None)
        assert out.dtype == torch.uint8 and out.shape == x.shape, op
        assert op == "Identity" or not torch.equal(out, x), f"{op} {magnitude} changed nothing"
        if magnitude == 0.9:
            # The case tests the clamp: more pixels saturate than in the input.
            assert (out == 255).sum() > (x == 255).sum(), f"{op} {magnitude} clamped nothing"
        tensors[f"case{i}"] = out.contiguous()
    for size in RESIZES:
        resize = Resize((size, size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        tensors[f"resize{size}"] = Normalize(MEAN, STD)(resize(x[:1].float() / 255)).contiguous()
    FIXTURES.mkdir(exist_ok=True)
    path = FIXTURES / "augment_ops.safetensors"
    reference = {
        "cases": CASES,
        "cifar10_policy": AutoAugment(AutoAugmentPolicy.CIFAR10).policies,
        "randaugment_ops": list(RandAugment()._augmentation_space(31, (SIZE, SIZE))),
        "magnitudes": magnitude_spaces(),
    }
    save_file(tensors, str(path), metadata={"reference": json.dumps(reference)})
    print(f"wrote {path} ({len(CASES)} cases)")


if __name__ == "__main__":
    main()
