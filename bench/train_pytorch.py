#!/usr/bin/env python3
"""`vit train`'s notebook recipe in plain PyTorch, for accuracy comparisons (issue #4).

    .venv/bin/python bench/train_pytorch.py --dataset cifar10 --data-dir data \\
        --embed-dim 128 --num-layers 4 --num-heads 4 --mlp-dim 256 --dropout 0 \\
        --epochs 5 --batch-size 256 --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 \\
        --label-smoothing 0.1 --clip-grad 1.0 --seed 0 --threads 2 --out runs/pytorch

The same data (the CIFAR binary files, read with numpy; `--train-subset N` = the first N
training images in file order), the same model (tests/reference/vit_reference.py, or
timm's VisionTransformer with --model timm) with vit's initialisation, and the same
recipe as `vit train --recipe notebook`:

- per epoch a shuffle; per step RandomCrop(32, padding 4) + horizontal flip on the uint8
  batch (batched tensor ops: zero padding, per-sample offsets, a per-sample flip mask),
  then ToTensor scaling and Normalize(CIFAR mean, std);
- AdamW (betas 0.9/0.999, eps 1e-8) with weight decay on the weight matrices only (none on
  1-D parameters, cls_token, pos_embed);
- a learning rate set every step: linear warm-up over --warmup-epochs, then cosine to 0
  (src/optim.rs::learning_rate);
- cross-entropy with label smoothing, gradient clipping to a global norm;
- after every epoch the test split in eval mode ("Validation Accuracy").

Random draws are seeded per (seed, epoch, step) with a port of vit's mixing function and
come in vit's order (shuffle; crop rows, crop columns, flip mask; dropout masks), meant to
give vit's shuffles and augmentations on the CPU (not checked bit for bit); the initial
weights differ.

Writes OUT/metrics.csv with vit's columns:
epoch,lr,train_loss,train_acc,test_loss,test_acc,epoch_seconds,images_per_second
"""

import argparse
import contextlib
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402
    MODEL_FLAGS,
    PRESETS,
    build_model,
    check_device,
    model_config,
    refuse_bad_model,
)
from vit_reference import MEAN as CIFAR_MEAN, STD as CIFAR_STD, param_groups  # noqa: E402
# Every image of either CIFAR: the model must take these (vit train would resize to another
# --image-size; this script does not).
DATA_IMAGE_SIZE = 32
DATA_CHANNELS = 3
CROP_PADDING = 4
FLIP_PROBABILITY = 0.5
METRICS_HEADER = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epoch_seconds",
    "images_per_second",
]
MASK64 = (1 << 64) - 1


def parse_args(argv=None):
    """(parser, args). --out is checked here but created later, by `create_out` once the data
    and the model have been checked too; the parser refuses it there if it cannot be."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data")
    p.add_argument("--model", choices=("reference", "timm"), default="reference")
    p.add_argument("--config", default="notebook", choices=sorted(PRESETS))
    for name in MODEL_FLAGS:
        kind = float if name == "dropout" else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    p.add_argument("--explicit-attention", action="store_true")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=5)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0, help="0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="folder for metrics.csv")
    args = p.parse_args(argv)
    if args.epochs <= 0 or args.batch_size <= 0:
        p.error("--epochs and --batch-size must be positive")
    # What vit refuses too, said here rather than as a traceback from deep in PyTorch.
    finite = math.isfinite(args.lr) and math.isfinite(args.weight_decay)
    if not (finite and args.lr > 0 and args.weight_decay >= 0 and args.warmup_epochs >= 0):
        p.error("--lr must be a positive finite number, --weight-decay a finite number >= 0, --warmup-epochs >= 0")
    if not 0 <= args.label_smoothing < 1:
        p.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0 <= args.clip_grad < math.inf:
        p.error(f"--clip-grad must be a finite number >= 0 (0 turns it off), got {args.clip_grad}")
    if not 0 <= args.seed <= MASK64:
        p.error(f"--seed must be a whole number in 0..={MASK64}, got {args.seed}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    config = model_config(args)
    refuse_bad_model(p, config)
    if config["image_size"] != DATA_IMAGE_SIZE:
        p.error(
            f"--image-size {config['image_size']}: {args.dataset}'s images are "
            f"{DATA_IMAGE_SIZE}x{DATA_IMAGE_SIZE} and this script does not resize them (vit "
            f"train does); pass --image-size {DATA_IMAGE_SIZE}, or leave it out"
        )
    if config["in_channels"] != DATA_CHANNELS:
        p.error(
            f"--in-channels {config['in_channels']}: {args.dataset} images have "
            f"{DATA_CHANNELS} channels; pass --in-channels {DATA_CHANNELS}, or leave it out"
        )
    check_device(p, args.device)
    if args.out is not None and (args.out / "metrics.csv").exists():
        p.error(f"{args.out} already holds a metrics.csv, which a run would replace; choose another --out")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; it takes a folder")
    if args.warmup_epochs >= args.epochs:
        # vit train's warning, word for word.
        print(
            f"warning: --warmup-epochs {args.warmup_epochs} is not below --epochs {args.epochs}: "
            "the learning rate rises for the whole run, reaching --lr only at its end if at "
            "all, and never decays; pass a smaller --warmup-epochs for a short run",
            file=sys.stderr,
        )
    return p, args


def create_out(parser, out):
    """Creates the folder `out` and its missing parents, called once every check has passed so
    that a refused run leaves no folder behind; where that fails, removes the parents it made
    (mkdir makes them before it fails on, say, a name too long) and refuses."""
    missing = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        for folder in missing:  # deepest first; rmdir removes only empty folders
            with contextlib.suppress(OSError):
                folder.rmdir()
        parser.error(f"cannot create --out {out} ({error.strerror}); choose another folder")


# --- data ------------------------------------------------------------------------------


def read_records(path, label_bytes, label_index, dataset, data_dir):
    if not path.exists():
        sys.exit(
            f"error: {path} is missing (run `vit download --dataset {dataset} --data-dir "
            f"{data_dir}`)"
        )
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + 3 * 32 * 32
    if raw.size % record:
        sys.exit(f"error: {path} is not a whole number of {record}-byte records")
    raw = raw.reshape(-1, record)
    labels = torch.from_numpy(raw[:, label_index].astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(raw[:, label_bytes:]).reshape(-1, 3, 32, 32))
    return images, labels


def load_dataset(name, data_dir):
    """(train_images, train_labels, test_images, test_labels, num_classes), uint8 NCHW."""
    if name == "cifar10":
        folder = data_dir / "cifar-10-batches-bin"
        read = lambda file: read_records(folder / file, 1, 0, name, data_dir)  # noqa: E731
        parts = [read(f"data_batch_{i}.bin") for i in range(1, 6)]
        train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        test = read("test_batch.bin")
        return (*train, *test, 10)
    folder = data_dir / "cifar-100-binary"
    train = read_records(folder / "train.bin", 2, 1, name, data_dir)
    test = read_records(folder / "test.bin", 2, 1, name, data_dir)
    return (*train, *test, 100)


def random_crop(images, padding):
    """RandomCrop(H, padding) with zero padding for each image of a uint8 batch."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(2 * padding + 1, (b,), device=images.device)
    left = torch.randint(2 * padding + 1, (b,), device=images.device)
    arange = lambda n: torch.arange(n, device=images.device)  # noqa: E731
    batch = arange(b).view(b, 1, 1, 1)
    channel = arange(c).view(1, c, 1, 1)
    rows = top.view(b, 1, 1, 1) + arange(h).view(1, 1, h, 1)
    cols = left.view(b, 1, 1, 1) + arange(w).view(1, 1, 1, w)
    return padded[batch, channel, rows, cols]


def random_horizontal_flip(images, p):
    b = images.shape[0]
    mask = (torch.rand(b, device=images.device) < p).view(b, 1, 1, 1)
    return torch.where(mask, images.flip(3), images)


def normalize(images):
    x = images.float() / 255.0
    mean = torch.tensor(CIFAR_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def train_transform(images):
    return normalize(random_horizontal_flip(random_crop(images, CROP_PADDING), FLIP_PROBABILITY))


# --- model, optimiser, schedule --------------------------------------------------------


@torch.no_grad()
def vit_init(model):
    """vit's (and timm's) initialisation: Linear weights trunc_normal(std .02) in [-2, 2],
    biases 0; LayerNorm 1/0; cls_token N(0, 1e-6^2); pos_embed trunc_normal(.02); the patch
    Conv2d keeps PyTorch's default uniform(+-1/sqrt(fan_in)) bounds."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Conv2d):
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            torch.nn.init.uniform_(module.weight, -bound, bound)
            torch.nn.init.uniform_(module.bias, -bound, bound)
    model.cls_token.copy_(torch.randn_like(model.cls_token) * 1e-6)
    torch.nn.init.trunc_normal_(model.pos_embed, std=0.02, a=-2.0, b=2.0)


def learning_rate(base_lr, step, warmup_steps, total_steps):
    """src/optim.rs::learning_rate: a linear warm-up from base_lr / warmup_steps at step 0
    to base_lr at step warmup_steps - 1, then a cosine decay to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def splitmix64_finalizer(x):
    """src/model/dropout.rs::splitmix64_finalizer."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def seed_bits(seed):
    """src/train/seeds.rs::seed_bits: the seed below 2^32, or hashed to 32 bits (the CPU
    generator keeps 32)."""
    return seed if seed <= 0xFFFFFFFF else splitmix64_finalizer(seed) & 0xFFFFFFFF


def mix32(x):
    """src/train/seeds.rs::mix32 (lowbias32, a bijection of the 32-bit numbers)."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def draw_seed(seed, epoch, step, steps_per_epoch):
    """src/train/seeds.rs::draw_seed: the seed of epoch `epoch`'s shuffle (step None) or of
    its step `step`'s augmentation and dropout, draws numbered in order and mapped by a
    32-bit permutation keyed by the run's seed."""
    draw = (epoch * (steps_per_epoch + 1) + (0 if step is None else step + 1)) & MASK64
    key = splitmix64_finalizer(seed_bits(seed))
    mixed = mix32((draw ^ key) & 0xFFFFFFFF)
    return mix32((mixed + (key >> 32)) & 0xFFFFFFFF)


@torch.no_grad()
def evaluate(model, images, labels, batch_size):
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    n = max(len(labels), 1)
    return loss_sum / n, correct / n


def main():
    parser, args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train_x, train_y, test_x, test_y, num_classes = load_dataset(args.dataset, args.data_dir)
    if args.train_subset is not None:
        if not 0 < args.train_subset <= len(train_y):
            sys.exit(f"error: --train-subset must be in 1..={len(train_y)}")
        train_x, train_y = train_x[: args.train_subset], train_y[: args.train_subset]
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)

    config = model_config(args)
    if args.num_classes is not None and args.num_classes != num_classes:
        sys.exit(f"error: --num-classes {args.num_classes}, but {args.dataset} has {num_classes}")
    config["num_classes"] = num_classes

    torch.manual_seed(seed_bits(args.seed))
    model = build_model(args.model, config, fused=not args.explicit_attention)
    vit_init(model)
    model.to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay),
        lr=args.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        foreach=False,
    )
    n_train = len(train_y)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = steps_per_epoch * args.warmup_epochs
    parameters = sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()

    out = args.out
    metrics = None
    if out is not None:
        create_out(parser, out)
        metrics = out / "metrics.csv"
        with open(metrics, "w", newline="") as f:
            csv.writer(f).writerow(METRICS_HEADER)
    print(
        f"{args.model} model {config} ({parameters:,} parameters), {n_train} training images, "
        f"{steps_per_epoch} steps per epoch, {threads} thread{'' if threads == 1 else 's'}",
        flush=True,
    )

    best, best_epoch = 0.0, 0
    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.train()
        torch.manual_seed(draw_seed(args.seed, epoch, None, steps_per_epoch))
        order = torch.randperm(n_train, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        lr = 0.0
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            torch.manual_seed(draw_seed(args.seed, epoch, step, steps_per_epoch))
            images = train_transform(train_x.index_select(0, index))
            labels = train_y.index_select(0, index)
            lr = learning_rate(args.lr, epoch * steps_per_epoch + step, warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            logits = model(images).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
            loss.backward()
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad, foreach=False)
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(-1) == labels).sum()
            seen += len(index)
        train_loss = loss_sum.item() / seen
        train_acc = correct.item() / seen
        if not math.isfinite(train_loss):
            sys.exit(f"error: the training loss became {train_loss} in epoch {epoch + 1}")
        train_seconds = time.perf_counter() - started
        test_loss, test_acc = evaluate(model, test_x, test_y, max(args.batch_size, 256))
        seconds = time.perf_counter() - started
        if test_acc > best or epoch == 0:  # vit's best_model rule: a later tie is not
            best, best_epoch = test_acc, epoch + 1
        row = [epoch + 1, lr, train_loss, train_acc, test_loss, test_acc, seconds]
        row.append(seen / train_seconds)
        if metrics is not None:
            with open(metrics, "a", newline="") as f:
                csv.writer(f).writerow(row)
        print(
            f"Epoch: {epoch + 1}, Validation Accuracy: {100 * test_acc:.2f}%  "
            f"(train loss {train_loss:.4f}, train acc {100 * train_acc:.2f}%, "
            f"test loss {test_loss:.4f}, lr {lr:.2e}, {seconds:.1f}s, "
            f"{seen / train_seconds:.0f} img/s)",
            flush=True,
        )
    print(f"Best Validation Accuracy: {100 * best:.2f}% (epoch {best_epoch} of {args.epochs})")


if __name__ == "__main__":
    main()
