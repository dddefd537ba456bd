"""Writes `tests/fixtures/png_files.safetensors`: PNG files in the variants tools write,
PIL's pixels for each, and PIL's verdict on them cut short, which `tests/data/` checks
vit's reader against.

    .venv/bin/python tests/reference/png_reference.py

For each variant NAME (a square image, so that vit decodes it at its own size):
- `NAME`: the whole file (uint8 bytes);
- `NAME.pixels`: PIL's `convert("RGB")` of it, uint8 [S, S, 3] (but for `grey16`, where
  PIL clips each sample to 255, its high byte, which vit keeps: the picture as it looks);
- `NAME.decoded`: lengths among the last 16 (the last data chunk's CRC and the IEND chunk
  cut off) at which PIL decodes the file, to the same pixels;
- `NAME.refused`: lengths at which PIL refuses the file, cut inside its image data (every
  5th byte from the first data chunk to 22 bytes before the end).
The 5 lengths in between are left out: there, PIL's verdict depends on the zlib it was
built with (whether the stream's checksum may be missing).
"""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SIDE = 24


def noise(channels: int, side: int = SIDE, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    high = 65536 if dtype == np.uint16 else 256
    shape = (side, side, channels) if channels > 1 else (side, side)
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype)


def pil_png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hand_png(side: int, depth: int, colour: int, rows: list, interlaced: bool = False,
             split: int = 0) -> bytes:
    """What PIL cannot write: 16-bit colour, Adam7 interlacing, many small data chunks.
    `rows` are the stored rows' bytes (each gets filter byte 0)."""
    header = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, int(interlaced))
    data = zlib.compress(b"".join(b"\x00" + row for row in rows), 9)
    parts = [data[i:i + split] for i in range(0, len(data), split)] if split else [data]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + b"".join(chunk(b"IDAT", part) for part in parts) + chunk(b"IEND", b""))


def adam7_rows(pixels: np.ndarray) -> list:
    """The rows of Adam7's seven passes (x0, dx, y0, dy), an empty pass left out."""
    rows = []
    for x0, dx, y0, dy in [(0, 8, 0, 8), (4, 8, 0, 8), (0, 4, 4, 8), (2, 4, 0, 4),
                           (0, 2, 2, 4), (1, 2, 0, 2), (0, 1, 1, 2)]:
        sub = pixels[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            rows += [row.tobytes() for row in sub]
    return rows


GREY16 = noise(1, dtype=np.uint16, seed=1)

VARIANTS = {
    "rgb": lambda: pil_png(Image.fromarray(noise(3))),
    "rgba": lambda: pil_png(Image.fromarray(noise(4), "RGBA")),
    "palette": lambda: pil_png(Image.fromarray(noise(3)).quantize(16)),
    "palette_transparent": lambda: pil_png(Image.fromarray(noise(3)).quantize(8), transparency=3),
    "grey": lambda: pil_png(Image.fromarray(noise(1), "L")),
    "grey_alpha": lambda: pil_png(Image.fromarray(noise(3)).convert("LA")),
    "one_bit": lambda: pil_png(Image.fromarray(noise(1) > 127)),
    "rgb16": lambda: hand_png(SIDE, 16, 2, [row.astype(">u2").tobytes() for row in noise(3, dtype=np.uint16)]),
    "grey16": lambda: hand_png(SIDE, 16, 0, [row.astype(">u2").tobytes() for row in GREY16]),
    "interlaced_13": lambda: hand_png(13, 8, 2, adam7_rows(noise(3, side=13)), interlaced=True),
    "interlaced": lambda: hand_png(SIDE, 8, 2, adam7_rows(noise(3)), interlaced=True),
    "many_chunks": lambda: hand_png(SIDE, 8, 2, [row.tobytes() for row in noise(3)], split=100),
}


def pil_rgb(data: bytes):
    """PIL's RGB pixels of the file, or None where it refuses it."""
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        return None


def main() -> None:
    tensors = {}
    for name, make in VARIANTS.items():
        data = make()
        pixels = pil_rgb(data)
        assert pixels is not None and pixels.shape[0] == pixels.shape[1], name
        if name == "grey16":
            assert np.array_equal(pixels[..., 0], np.minimum(GREY16, 255)), "PIL clips"
            pixels = np.repeat((GREY16 >> 8).astype(np.uint8)[..., None], 3, axis=-1)
        decoded = list(range(len(data) - 16, len(data)))
        for length in decoded:
            cut = pil_rgb(data[:length])
            assert cut is not None and np.array_equal(cut, pil_rgb(data)), (name, length)
        first_data = data.index(b"IDAT") + 4
        refused = list(range(first_data, len(data) - 21, 5))
        for length in refused:
            assert pil_rgb(data[:length]) is None, (name, length)
        tensors[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        tensors[f"{name}.pixels"] = torch.from_numpy(pixels.copy())
        tensors[f"{name}.decoded"] = torch.tensor(decoded, dtype=torch.int64)
        tensors[f"{name}.refused"] = torch.tensor(refused, dtype=torch.int64)
    path = FIXTURES / "png_files.safetensors"
    save_file(tensors, str(path))
    print(f"wrote {path}: {len(VARIANTS)} variants")


if __name__ == "__main__":
    main()
