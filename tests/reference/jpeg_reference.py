"""Writes `tests/fixtures/jpeg_files.safetensors`: JPEG files made by PIL (libjpeg) in the
variants cameras and tools write, PIL's pixels for each, and PIL's verdict on them cut
short, which `tests/data/` checks vit's reader against.

    .venv/bin/python tests/reference/jpeg_reference.py

For each variant NAME (a square image, so that vit decodes it at its own size):
- `NAME`: the whole file (uint8 bytes, which PIL decodes);
- `NAME.pixels`: PIL's `convert("RGB")` of it, uint8 [S, S, 3], which vit's decode must be
  close to (its decoder rounds differently from libjpeg; `tests/data/` has the bounds);
- `NAME.cuts` (int64): lengths at which PIL refuses the file cut there ("image file is
  truncated", "broken data stream"), at every 7th byte from the first scan on and at each
  of the last 8.
vit must decode every whole file and refuse every one of those cuts. (Where PIL decodes a
cut file, with bytes after the last scan but no end marker, vit refuses it: the safe side.)
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SIDE = 44


def picture(mode: str) -> Image.Image:
    """44x44 pixels of smooth shapes plus noise: enough scan data to cut in many places, and
    a side that is no multiple of 8 or 16 (blocks and subsampled blocks cut at the edges)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    rgb = np.stack([x * 5, y * 6, (x * y) % 256], axis=-1) + rng.integers(0, 40, (SIDE, SIDE, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).convert(mode)


def encode(mode: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture(mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def with_thumbnail() -> bytes:
    """A JPEG whose EXIF block holds a thumbnail, itself a whole JPEG (markers and all)."""
    thumbnail = io.BytesIO()
    picture("RGB").resize((12, 10)).save(thumbnail, "JPEG")
    exif = Image.Exif()
    exif[0x010E] = "with a thumbnail"
    buffer = io.BytesIO()
    picture("RGB").save(buffer, "JPEG", exif=exif.tobytes() + thumbnail.getvalue())
    return buffer.getvalue()


VARIANTS = {
    "baseline": lambda: encode("RGB", quality=90),
    "progressive": lambda: encode("RGB", quality=90, progressive=True),
    "restarts": lambda: encode("RGB", quality=90, restart_marker_blocks=1),
    "progressive_restarts": lambda: encode("RGB", progressive=True, restart_marker_rows=1),
    "optimized_444": lambda: encode("RGB", optimize=True, subsampling=0),
    "grey": lambda: encode("L"),
    "cmyk": lambda: encode("CMYK"),
    "thumbnail": with_thumbnail,
}


def pil_pixels(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))


def pil_decodes(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data)).load()
        return True
    except (OSError, SyntaxError):
        return False


def main() -> None:
    tensors = {}
    for name, make in VARIANTS.items():
        data = make()
        assert pil_decodes(data), name
        first_scan = data.index(b"\xff\xda")
        lengths = sorted(set(range(first_scan, len(data), 7)) | set(range(len(data) - 8, len(data))))
        cuts = [length for length in lengths if not pil_decodes(data[:length])]
        assert cuts, name
        tensors[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        tensors[f"{name}.cuts"] = torch.tensor(cuts, dtype=torch.int64)
        tensors[f"{name}.pixels"] = pil_pixels(data)
        assert tensors[f"{name}.pixels"].shape == (SIDE, SIDE, 3), name
    path = FIXTURES / "jpeg_files.safetensors"
    save_file(tensors, str(path))
    print(f"wrote {path}: {len(VARIANTS)} variants")


if __name__ == "__main__":
    main()
