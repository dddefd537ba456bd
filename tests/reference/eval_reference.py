"""`vit eval` done the notebook's way, for `tests/train/` and the README's check on real data.

    eval_reference.py CHECKPOINT DATA_DIR

Reads the test images of the dataset CHECKPOINT records (CIFAR-10's test_batch.bin from
DATA_DIR/cifar-10-batches-bin, or CIFAR-100's test.bin from DATA_DIR/cifar-100-binary with
its fine labels, or its coarse ones for cifar100-coarse) with numpy (its own reader, not
vit's), turns each image into a PIL image and through the notebook's test transform
(torchvision's ToTensor and Normalize with the notebook's constants), loads CHECKPOINT into
timm's VisionTransformer with strict=True, and prints one JSON object:
{"accuracy": ..., "top5_accuracy": ..., "loss": ..., "images": ...} (loss: mean
cross-entropy, no smoothing; top5_accuracy as timm's validation counts Acc@5).
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision import transforms
from vit_reference import MEAN, STD, timm_model


# Each dataset's test file, the number of label bytes before each image's 3,072 (CIFAR-100:
# the coarse label, then the fine one), and which of them is this dataset's label.
TEST_FILES = {
    "cifar10": ("cifar-10-batches-bin/test_batch.bin", 1, 0),
    "cifar100": ("cifar-100-binary/test.bin", 2, 1),
    "cifar100-coarse": ("cifar-100-binary/test.bin", 2, 0),
}


def cifar_test(data_dir, dataset):
    """uint8 images [N, 32, 32, 3] (HWC, as PIL takes them) and int64 labels [N]."""
    name, label_bytes, label = TEST_FILES[dataset]
    records = np.fromfile(os.path.join(data_dir, name), dtype=np.uint8).reshape(-1, label_bytes + 3 * 32 * 32)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, torch.from_numpy(records[:, label].astype(np.int64))


def main(checkpoint, data_dir):
    with safe_open(checkpoint, "pt") as f:
        metadata = f.metadata()
    dataset = metadata.get("dataset", "cifar10")
    if dataset not in TEST_FILES:
        sys.exit(f"{checkpoint} was trained on {dataset}; this script reads {', '.join(TEST_FILES)}")
    config = json.loads(metadata["config"])
    model = timm_model(config).eval()
    model.load_state_dict(load_file(checkpoint), strict=True)
    test_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    images, labels = cifar_test(data_dir, dataset)
    inputs = torch.stack([test_transform(Image.fromarray(image)) for image in images])
    loss, correct, correct5 = 0.0, 0, 0
    with torch.no_grad():
        for batch, batch_labels in zip(inputs.split(500), labels.split(500)):
            logits = model(batch)
            loss += F.cross_entropy(logits, batch_labels, reduction="sum").item()
            correct += (logits.argmax(-1) == batch_labels).sum().item()
            top5 = logits.topk(5, -1).indices
            correct5 += (top5 == batch_labels[:, None]).any(-1).sum().item()
    n = len(labels)
    print(json.dumps({"accuracy": correct / n, "top5_accuracy": correct5 / n, "loss": loss / n, "images": n}))


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    main(*sys.argv[1:])
