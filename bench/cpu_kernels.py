#!/usr/bin/env python3
"""The two CPU kernels where vit differs from PyTorch, timed in PyTorch itself.

    .venv/bin/python bench/cpu_kernels.py [--threads 2]

1. A linear layer's matrix product: libtorch's `linear` (MKL's GEMM on x86, what
   `nn.Linear` runs) against oneDNN's `mkldnn::_linear_pointwise` (what vit's `Linear`
   runs on the CPU), at the notebook model's shapes (a 128-image batch is 8,320 rows of
   65 tokens) and at small ones, where oneDNN's set-up per call shows; then the two
   products of its backward pass at the model's shapes, as PyTorch's autograd runs them
   (`mm`) and in oneDNN (src/ffi/libtorch_ext.cpp, `OneDnnLinear`, runs the input's
   gradient there; the weight's, slower in oneDNN on every CPU measured, in `mm`).
2. A dropout mask: libtorch's Bernoulli sampler, per element (what `nn.Dropout` runs).
   vit's own sampler is timed by `vit bench --phases` with and without
   `--libtorch-dropout` (see bench/README.md).
"""

import argparse
import time

import torch


def microseconds(work, min_seconds=0.5):
    """Warm up, then the mean time per call over at least `min_seconds`."""
    for _ in range(3):
        work()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds or calls < 5:
        work()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    onednn = torch.ops.mkldnn._linear_pointwise
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread{'' if threads == 1 else 's'}")
    print("linear [rows, in] x [in, out] + bias: microseconds per call")
    print(f"{'rows':>6} {'in':>4} {'out':>4} {'multiply-adds':>14} {'libtorch':>10} {'oneDNN':>10} {'ratio':>6}")
    shapes = [
        (65, 16, 48),  # the host-overhead model (embed 16), one image
        (65, 256, 256),  # one notebook-size image: the threshold in src/ffi
        (260, 256, 256),
        (8320, 256, 768),  # notebook model, batch 128: qkv
        (8320, 256, 256),  # proj
        (8320, 256, 512),  # fc1
        (8320, 512, 256),  # fc2
    ]
    with torch.no_grad():
        for rows, n_in, n_out in shapes:
            x, w, b = torch.randn(rows, n_in), torch.randn(n_out, n_in), torch.randn(n_out)
            theirs = microseconds(lambda: torch.nn.functional.linear(x, w, b))
            ours = microseconds(lambda: onednn(x, w, b, "none", [], ""))
            print(
                f"{rows:>6} {n_in:>4} {n_out:>4} {rows * n_in * n_out:>14,} "
                f"{theirs:>10.1f} {ours:>10.1f} {theirs / ours:>6.2f}"
            )
        print("backward: microseconds per call, libtorch (mm) / oneDNN (vit: oneDNN / mm)")
        print(f"{'rows':>6} {'in':>4} {'out':>4} {'input grad':>21} {'weight grad':>21}")
        for rows, n_in, n_out in shapes[3:]:
            x, w, g = torch.randn(rows, n_in), torch.randn(n_out, n_in), torch.randn(rows, n_out)
            # grad [rows, out] x weight [out, in]; grad^T [out, rows] x input [rows, in].
            input_grad = (
                microseconds(lambda: g.mm(w)),
                microseconds(lambda: onednn(g, w.t().contiguous(), None, "none", [], "")),
            )
            weight_grad = (
                microseconds(lambda: g.t().mm(x)),
                microseconds(lambda: onednn(g.t(), x.contiguous().t(), None, "none", [], "")),
            )
            pairs = (input_grad, weight_grad)
            times = " ".join(f"{theirs:>10.1f} {ours:>10.1f}" for theirs, ours in pairs)
            print(f"{rows:>6} {n_in:>4} {n_out:>4} {times}")
        mask = torch.empty(128, 65, 512)
        per_element = microseconds(lambda: mask.bernoulli_(0.9)) * 1e3 / mask.numel()
        print(f"dropout mask, libtorch's Bernoulli sampler: {per_element:.2f} ns per element")


if __name__ == "__main__":
    main()
