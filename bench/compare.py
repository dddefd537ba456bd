#!/usr/bin/env python3
"""Side-by-side throughput of `vit bench` and the same model, batch and step in PyTorch.

    .venv/bin/python bench/compare.py --vit target/release/vit [--config notebook]
        [--batch-size 128] [--threads 2] [--steps 10] [--warmup 3] [--device cpu|cuda]
        [--precision fp32|bf16] [--adamw fused|loop] [--repeats 3] [--explicit-attention]
        [--sides vit,reference,timm] [--phases] [--pytorch-foreach]
        [--also-vit vit-LABEL=PATH] [--cuda-graph] [--libtorch-linear | --onednn-linear]
        [--libtorch-dropout] [--side-timeout SECONDS] [--json]

Three sides, each in its own process so that peak RSS is per side:

- `vit`: `vit bench --json` with the same flags;
- `reference`: tests/reference/vit_reference.py (fused attention through
  `F.scaled_dot_product_attention` unless --explicit-attention);
- `timm`: `timm.models.vision_transformer.VisionTransformer` with the same nine numbers
  (only when timm is installed).

Every side times the same training step (forward in train mode, cross-entropy with label
smoothing 0.1, backward, clip_grad_norm 1.0, AdamW with decay / no-decay groups and the
same AdamW kernel, argmax accuracy) and the same inference (eval mode, no grad) on random
inputs, `--warmup` untimed steps then `--steps` timed ones. With --repeats N the sides run
interleaved N times (vit, reference, timm, vit, reference, timm, ...) and the median of
each figure is reported, so that machine noise hits every side alike. See bench/README.md.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT / "tests" / "reference"

sys.path.insert(0, str(REFERENCE_DIR))
from vit_reference import PRESETS, VisionTransformer, param_groups, timm_model  # noqa: E402

MODEL_FLAGS = list(PRESETS["notebook"])

LABEL_SMOOTHING = 0.1
CLIP_GRAD = 1.0
LR = 1e-3
WEIGHT_DECAY = 0.05

FIGURES = ("train_images_per_s", "infer_images_per_s", "peak_rss_bytes", "peak_device_bytes")
# What every side's report holds: the figures the table cannot do without, and the model's
# size, compared across sides.
REPORT_KEYS = ("train_images_per_s", "infer_images_per_s", "parameters")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vit", default=str(ROOT / "target" / "release" / "vit"), help="vit binary")
    p.add_argument("--config", default="notebook", choices=sorted(PRESETS))
    for name in MODEL_FLAGS:
        kind = float if name == "dropout" else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads on every side")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs; medians reported")
    p.add_argument(
        "--explicit-attention",
        action="store_true",
        help="explicit softmax(q k^T) v on every side instead of the fused kernel",
    )
    p.add_argument(
        "--sides",
        default="vit,reference,timm",
        help="comma-separated subset of vit,reference,timm (timm is skipped if missing)",
    )
    p.add_argument(
        "--adamw",
        default="fused",
        choices=("fused", "loop"),
        help="AdamW kernel on every side: fused (PyTorch fused=True) or loop (foreach=False)",
    )
    p.add_argument(
        "--pytorch-foreach",
        action="store_true",
        help="PyTorch runs its multi-tensor (foreach) AdamW, its default on CUDA, whatever "
        "--adamw says (vit has no foreach AdamW)",
    )
    p.add_argument(
        "--phases",
        action="store_true",
        help="also time forward / backward / clip / AdamW separately on every side "
        "(after the timed steps, synchronised per phase)",
    )
    p.add_argument(
        "--also-vit",
        action="append",
        default=[],
        metavar="vit-LABEL=PATH",
        help="one more vit binary as its own side, labelled vit-LABEL (e.g. "
        "vit-before=old/vit), interleaved with the others: before/after comparisons of a "
        "change in one run",
    )
    linear = p.add_mutually_exclusive_group()
    linear.add_argument(
        "--libtorch-linear",
        action="store_true",
        help="vit runs its CPU linear layers through libtorch's linear (MKL's GEMM), as "
        "the PyTorch sides do, instead of oneDNN (unasked: the CPU's default, oneDNN on "
        "AMD CPUs only)",
    )
    linear.add_argument(
        "--onednn-linear",
        action="store_true",
        help="vit runs its CPU linear layers in oneDNN, also where it would not unasked",
    )
    p.add_argument(
        "--libtorch-dropout",
        action="store_true",
        help="vit draws its CPU dropout masks with libtorch's Bernoulli sampler, as the "
        "PyTorch sides do, instead of its own faster one",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="one more side, vit-graph: the --vit binary with --cuda-graph (its training "
        "steps replayed as a CUDA graph; the PyTorch sides stay eager)",
    )
    p.add_argument(
        "--side-timeout",
        type=float,
        default=None,
        help="seconds one side's run may take before it counts as failed (default: no limit)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    # Internal: run one PyTorch side in this process and print its JSON report.
    p.add_argument("--worker", choices=("reference", "timm"), help=argparse.SUPPRESS)
    p.add_argument("--model-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = default_device()
    check_device(p, args.device)
    if args.cuda_graph and not args.device.startswith("cuda"):
        p.error("--cuda-graph needs --device cuda (CUDA graphs exist on CUDA only)")
    if args.steps <= 0 or args.batch_size <= 0 or args.repeats <= 0 or args.warmup < 0:
        p.error("--steps, --batch-size and --repeats must be positive, --warmup >= 0")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.side_timeout is not None and not args.side_timeout > 0:
        p.error("--side-timeout takes a positive number of seconds")
    if not args.worker:
        # A worker's model is --model-json, which its driver has checked.
        refuse_bad_model(p, model_config(args))
    return args


def default_device():
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def check_device(parser, device):
    """A parser error for a `device` that is not cpu, cuda or cuda:N, or a CUDA one where
    PyTorch sees none (not a traceback later). Shared with train_pytorch.py."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        parser.error(f"--device takes cpu, cuda or cuda:N, got `{device}`")
    if device.startswith("cuda") and default_device() != "cuda":
        parser.error(f"--device {device}: PyTorch sees no CUDA device here; use --device cpu")


def refuse_bad_model(parser, config):
    """A parser error for a model vit refuses (in vit's words), before any side runs:
    sizes of 0 or less, a dropout outside [0, 1), heads that do not divide the embedding,
    patches that do not tile the image. Shared with train_pytorch.py."""
    for name in MODEL_FLAGS:
        if name != "dropout" and config[name] < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {config[name]}")
    if not 0 <= config["dropout"] < 1:
        parser.error(f"--dropout must be in [0, 1), got {config['dropout']}")
    if config["embed_dim"] % config["num_heads"]:
        parser.error(
            f"--embed-dim ({config['embed_dim']}) must be divisible by --num-heads "
            f"({config['num_heads']})"
        )
    if config["image_size"] % config["patch_size"]:
        parser.error(
            f"--image-size ({config['image_size']}) must be divisible by --patch-size "
            f"({config['patch_size']})"
        )


def model_config(args):
    """The preset of --config with the model flags given."""
    config = dict(PRESETS[args.config])
    for name in MODEL_FLAGS:
        value = getattr(args, name)
        if value is not None:
            config[name] = value
    return config


# ---------------------------------------------------------------------------------------
# The PyTorch side (runs in a child process: `compare.py --worker reference|timm`).


def build_model(kind, config, fused):
    if kind == "reference":
        return VisionTransformer(**config, fused_attention=fused)
    return timm_model(config, fused_attention=fused)


def rss_bytes(field):
    """`field` of /proc/self/status in bytes (VmHWM: the peak resident set, VmRSS: the
    present one), as vit bench reads it; 0 where unknown. Not ru_maxrss: a process keeps
    its parent's peak through fork and exec, so this driver's memory would count."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return 0


class Side:
    """One PyTorch side: the model, optimizer and batch, and vit bench's step on them."""

    def __init__(self, args, config):
        import torch

        self.args, self.torch = args, torch
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(0)
        fused_attention = not args.explicit_attention
        self.model = build_model(args.worker, config, fused=fused_attention).to(self.device)
        if args.pytorch_foreach:
            kernel = {"foreach": True}
        else:
            kernel = {"fused": True} if args.adamw == "fused" else {"foreach": False}
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.999), eps=1e-8, **kernel
        )
        size = config["image_size"]
        shape = (args.batch_size, config["in_channels"], size, size)
        self.images = torch.randn(shape, device=self.device)
        self.labels = torch.randint(config["num_classes"], (args.batch_size,), device=self.device)
        self.last_lap = 0.0

    def autocast(self):
        import contextlib

        if self.args.precision == "bf16":
            return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def lap(self, phases, name):
        """With `phases`: adds the (synchronised) time since the last lap to phases[name]."""
        if phases is None:
            return
        self.sync()
        now = time.perf_counter()
        if name is not None:
            phases[name] += now - self.last_lap
        self.last_lap = now

    def train_step(self, phases=None):
        import torch.nn.functional as F

        model, optimizer = self.model, self.optimizer
        self.lap(phases, None)
        optimizer.zero_grad()
        with self.autocast():
            logits = model(self.images)
        logits = logits.float()
        loss = F.cross_entropy(logits, self.labels, label_smoothing=LABEL_SMOOTHING)
        self.lap(phases, "forward")
        loss.backward()
        self.lap(phases, "backward")
        # PyTorch's default: multi-tensor kernels on CUDA, a per-tensor loop on the CPU;
        # vit calls the multi-tensor kernels, whose CPU version is that same loop.
        self.torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD)
        self.lap(phases, "clip")
        optimizer.step()
        correct = (logits.argmax(-1) == self.labels).sum()
        self.lap(phases, "optimizer")
        return loss.detach(), correct

    def infer(self):
        with self.torch.no_grad(), self.autocast():
            return self.model(self.images)

    def timed(self, work, train):
        """Seconds for --steps calls of `work` after --warmup untimed ones, the model in
        training mode or not. The mode is set once, as a training loop sets it once an
        epoch: `model.train()` walks every module, 0.1 to 0.25 ms a call here, as much as
        a tenth of a small model's step."""
        self.model.train(train)
        for _ in range(self.args.warmup):
            work()
        self.sync()
        start = time.perf_counter()
        for _ in range(self.args.steps):
            work()
        self.sync()
        return time.perf_counter() - start


def worker(args):
    import torch

    torch.set_num_threads(args.threads)
    rss_after_import = rss_bytes("VmRSS:")
    side = Side(args, json.loads(args.model_json))
    if side.cuda:
        torch.cuda.reset_peak_memory_stats(side.device)
    train_seconds = side.timed(side.train_step, train=True)
    infer_seconds = side.timed(side.infer, train=False)
    phases = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    if args.phases:
        side.model.train()
        for _ in range(args.steps):
            side.train_step(phases)
    images_timed = args.batch_size * args.steps
    report = {
        "side": args.worker,
        "device": str(side.device),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "fused_attention": not args.explicit_attention,
        "parameters": sum(p.numel() for p in side.model.parameters()),
        "train_images_per_s": images_timed / train_seconds,
        "infer_images_per_s": images_timed / infer_seconds,
        "peak_rss_bytes": rss_bytes("VmHWM:"),
        "baseline_rss_bytes": rss_after_import,
        "peak_device_bytes": torch.cuda.max_memory_allocated(side.device) if side.cuda else None,
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
    }
    if args.phases:
        report["phase_ms_per_step"] = {k: 1e3 * v / args.steps for k, v in phases.items()}
    print(json.dumps(report))


# ---------------------------------------------------------------------------------------
# The driver.


class SideFailed(Exception):
    """A side's command failed or printed no report; the message says how."""


def run_json(command, env, timeout=None):
    """The JSON report `command` printed last, and the lines it wrote to stderr (a side's
    warnings, such as vit's on bf16 where the CPU has no bf16 instructions)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SideFailed(f"`{' '.join(command)}` took more than {timeout:g} s") from None
    if done.returncode != 0:
        error = done.stderr.strip() or "(no output)"
        if "Traceback (most recent call last)" in error:
            # A Python side's error, without its traceback: the last line says what it was.
            error = error.splitlines()[-1]
        raise SideFailed(f"`{' '.join(command)}` failed with exit status {done.returncode}:\n{error}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SideFailed(f"`{' '.join(command)}` printed no JSON:\n{done.stdout}{done.stderr}")
    try:
        report = json.loads(lines[-1])
    except json.JSONDecodeError as error:
        raise SideFailed(f"`{' '.join(command)}` printed a report that is not JSON ({error})") from None
    # An older vit (--also-vit) may not report every figure the table needs.
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise SideFailed(f"`{' '.join(command)}` printed a report without {', '.join(missing)}")
    return report, [line for line in done.stderr.splitlines() if line.strip()]


def side_commands(args, config):
    common = [
        "--batch-size", str(args.batch_size),
        "--steps", str(args.steps),
        "--warmup", str(args.warmup),
        "--device", args.device,
        "--precision", args.precision,
        "--threads", str(args.threads),
        "--adamw", args.adamw,
    ]  # fmt: skip
    if args.explicit_attention:
        common.append("--explicit-attention")
    wanted = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(wanted) - {"vit", "reference", "timm"}
    if unknown:
        sys.exit(f"error: unknown side(s) {sorted(unknown)}; choose from vit,reference,timm")
    commands = {}
    binaries = [("vit", args.vit, [])] if "vit" in wanted else []
    if args.cuda_graph:
        binaries.append(("vit-graph", args.vit, ["--cuda-graph"]))
    for extra in args.also_vit:
        label, sep, path = extra.partition("=")
        if not sep or not label.startswith("vit-"):
            sys.exit(f"error: --also-vit takes vit-LABEL=PATH, got `{extra}`")
        binaries.append((label, path, []))
    labels = [label for label, _, _ in binaries]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        sys.exit(
            f"error: two vit sides are labelled {', '.join(twice)} (vit-graph is --cuda-graph's "
            "side); give each --also-vit its own label"
        )
    model_flags = ["--config", args.config]
    for name in MODEL_FLAGS:
        model_flags += ["--" + name.replace("_", "-"), str(config[name])]
    vit_flags = [
        flag
        for flag, on in [
            ("--libtorch-linear", args.libtorch_linear),
            ("--onednn-linear", args.onednn_linear),
            ("--libtorch-dropout", args.libtorch_dropout),
        ]
        if on
    ]
    for label, path, flags in binaries:
        # Absolute: a bare name (`vit`) would otherwise be looked up on PATH.
        vit = Path(path).resolve()
        if not (vit.is_file() and os.access(vit, os.X_OK)):
            sys.exit(
                f"error: no vit binary at {path} (an executable file); build it with "
                "`cargo build --release`"
            )
        commands[label] = [str(vit), "bench", *model_flags, *common, *vit_flags, *flags, "--json"]
        if args.phases:
            commands[label].append("--phases")
    worker = [sys.executable, str(Path(__file__).resolve()), "--model-json", json.dumps(config)]
    worker += common
    if args.pytorch_foreach:
        worker.append("--pytorch-foreach")
    if args.phases:
        worker.append("--phases")
    for side in ("reference", "timm"):
        if side not in wanted:
            continue
        if side == "timm" and not timm_installed():
            print("note: timm is not installed; skipping the timm side", file=sys.stderr)
            continue
        commands[side] = [*worker, "--worker", side]
    return commands


def timm_installed():
    try:
        import importlib.util

        return importlib.util.find_spec("timm") is not None
    except ValueError:
        return False


def median_report(runs):
    """The median of each figure over the repeats (first run's other fields)."""
    merged = dict(runs[0])
    for key in FIGURES:
        values = [r.get(key) for r in runs if r.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    for key in ("train_images_per_s", "infer_images_per_s"):
        merged[key + "_all"] = [r[key] for r in runs]
    if "phase_ms_per_step" in runs[0]:
        merged["phase_ms_per_step"] = {
            k: statistics.median(r["phase_ms_per_step"][k] for r in runs)
            for k in runs[0]["phase_ms_per_step"]
        }
    return merged


def ratio(a, b):
    return {key: a[key] / b[key] for key in FIGURES if a.get(key) and b.get(key)}


def is_vit(side):
    return side == "vit" or side.startswith("vit-")


def mib(value):
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def cpu_kernels(settings, sides):
    """What vit's CPU linear layers and dropout masks ran, for the table's first line."""
    if settings["device"] != "cpu" or not any(is_vit(side) for side in sides):
        return ""
    # What each vit side reports it ran: unasked, its CPU's default.
    ran = {sides[side].get("libtorch_linear") for side in sides if is_vit(side)}
    if len(ran) > 1:
        linear = "oneDNN or libtorch (by side)"
    else:
        linear = "libtorch" if ran.pop() else "oneDNN"
    if settings["model"]["dropout"] == 0:
        return f"vit's linear layers in {linear} (no dropout masks: dropout 0), "
    masks = "libtorch's" if settings["libtorch_dropout"] else "its own"
    return f"vit's linear layers in {linear} and dropout masks from {masks} sampler, "


def print_table(result):
    s = result["settings"]
    sides = result["sides"]
    print(
        f"{s['config']} config ({result['parameters']:,} parameters), batch {s['batch_size']}, "
        f"{s['precision']} on {s['device']}, "
        f"{s['threads']} thread{'' if s['threads'] == 1 else 's'}, "
        f"{'explicit' if s['explicit_attention'] else 'fused'} attention, "
        f"{s['adamw']} AdamW{' (PyTorch: foreach)' if s['pytorch_foreach'] else ''}, "
        f"{cpu_kernels(s, sides)}"
        f"{s['warmup']} warm-up + {s['steps']} timed steps, median of {s['repeats']}"
    )
    names = list(sides)
    for n in names:
        # A CUDA graph's side warms up longer: its eager steps and its capture.
        warmup = sides[n].get("warmup", s["warmup"])
        if warmup != s["warmup"]:
            print(f"({n}: {warmup} training warm-up steps, its CUDA graph's eager ones and "
                  "capture)")
    width = max([14] + [len(n) + 2 for n in names])
    header = f"{'':22}" + "".join(f"{n:>{width}}" for n in names)
    pairs = list(result["ratios"])
    pair_width = max([16] + [len(pair) + 2 for pair in pairs])
    header += "".join(f"{pair:>{pair_width}}" for pair in pairs)
    print(header)
    rows = [
        ("train images/s", "train_images_per_s", lambda v: f"{v:.1f}"),
        ("inference images/s", "infer_images_per_s", lambda v: f"{v:.1f}"),
        ("peak RSS", "peak_rss_bytes", mib),
    ]
    if any(sides[n].get("peak_device_bytes") for n in names):
        rows.append(("peak device memory", "peak_device_bytes", mib))
    for label, key, fmt in rows:
        line = f"{label:22}"
        for n in names:
            value = sides[n].get(key)
            line += f"{'-' if value is None else fmt(value):>{width}}"
        for pair in pairs:
            value = result["ratios"][pair].get(key)
            line += f"{'-' if value is None else f'{value:.3f}':>{pair_width}}"
        print(line)
    for n in names:
        phases = sides[n].get("phase_ms_per_step")
        if phases:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
            eager = " (eager)" if sides[n].get("cuda_graph") else ""
            print(f"{n} ms per training step{eager}: {parts}")
    if s["repeats"] > 1:
        for n in names:
            all_train = ", ".join(f"{v:.1f}" for v in sides[n]["train_images_per_s_all"])
            all_infer = ", ".join(f"{v:.1f}" for v in sides[n]["infer_images_per_s_all"])
            print(f"{n}: train [{all_train}], inference [{all_infer}]")
    for side, failure in result["failed"].items():
        # The line that says what went wrong: a vit error's is followed by clap's hint.
        lines = failure.strip().splitlines()
        reason = next((line for line in reversed(lines) if line.startswith("error")), lines[-1])
        print(f"{side}: failed, left out ({reason})")
    baseline = ", ".join(f"{n} {mib(sides[n].get('baseline_rss_bytes'))}" for n in names)
    if pairs:
        print("ratio > 1: vit is faster (or, for memory, uses more).")
    print(
        "RSS includes each runtime's own footprint "
        f"(RSS before the model was built: {baseline})."
    )


def main():
    args = parse_args()
    if args.worker:
        worker(args)
        return
    config = model_config(args)
    commands = side_commands(args, config)
    if not commands:
        sys.exit("error: no side to run")
    env = dict(os.environ)
    runs = {side: [] for side in commands}
    # A side that fails is left out of the table (and the exit status says so), so that
    # one broken side does not cost the others' figures.
    failed = {}
    # What a side said on stderr is passed on, each line once, though every repeat says it.
    said = {side: set() for side in commands}
    for repeat in range(args.repeats):
        for side, command in commands.items():
            if side in failed:
                continue
            print(f"[{repeat + 1}/{args.repeats}] {side} ...", file=sys.stderr, flush=True)
            try:
                report, stderr_lines = run_json(command, env, args.side_timeout)
            except SideFailed as failure:
                failed[side] = str(failure)
                print(f"error: side {side}: {failure}", file=sys.stderr, flush=True)
                continue
            runs[side].append(report)
            for line in stderr_lines:
                if line not in said[side]:
                    said[side].add(line)
                    print(f"{side}: {line}", file=sys.stderr, flush=True)
            # Said at once: a run cut short before the table still shows what it measured.
            print(
                f"[{repeat + 1}/{args.repeats}] {side}: train {report['train_images_per_s']:.1f}, "
                f"inference {report['infer_images_per_s']:.1f} images/s",
                file=sys.stderr,
                flush=True,
            )
    sides = {side: median_report(r) for side, r in runs.items() if side not in failed}
    if not sides:
        sys.exit("error: every side failed")
    counts = {side: r["parameters"] for side, r in sides.items()}
    if len(set(counts.values())) != 1:
        sys.exit(f"error: the sides built different models (parameters: {counts})")
    ratios = {}
    for vit in (s for s in sides if is_vit(s)):
        for side in (s for s in sides if not is_vit(s)):
            ratios[f"{vit}/{side}"] = ratio(sides[vit], sides[side])
    for side in (s for s in sides if s.startswith("vit-") and "vit" in sides):
        ratios[f"vit/{side}"] = ratio(sides["vit"], sides[side])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "settings": {
            "config": args.config,
            "model": config,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "device": args.device,
            "precision": args.precision,
            "repeats": args.repeats,
            "explicit_attention": args.explicit_attention,
            "adamw": args.adamw,
            "pytorch_foreach": args.pytorch_foreach,
            "libtorch_linear": args.libtorch_linear,
            "onednn_linear": args.onednn_linear,
            "libtorch_dropout": args.libtorch_dropout,
            "cuda_graph": args.cuda_graph,
            # Which binary each vit side ran (--vit, --also-vit).
            "vit_binaries": {side: cmd[0] for side, cmd in commands.items() if is_vit(side)},
        },
        "parameters": next(iter(counts.values())),
        "sides": sides,
        "ratios": ratios,
        "failed": failed,
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    if failed:
        sys.exit(f"error: side(s) {', '.join(failed)} failed (see above); the table has the rest")


if __name__ == "__main__":
    main()
