"""Peer for benchmark setup B: one lightly 1.6 BYOL training step in PyTorch on CPU.

Run in its own environment (PyTorch is not a dependency of byol_jax):
  python3 -m venv /tmp/peers && /tmp/peers/bin/pip install "lightly>=1.6,<1.7" torch torchvision
  /tmp/peers/bin/python docs/peers/lightly_step.py [--channels_last]

The model is lightly's BYOL example at CIFAR scale, as in ``configs/bench_lightly.py``:
torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, BYOLProjectionHead 512 → 1024
→ 256, BYOLPredictionHead 256 → 1024 → 256, a momentum copy of backbone and projector updated
with ``update_momentum`` (cosine schedule from 0.99), NegativeCosineSimilarity symmetrized, SGD
with momentum 0.9. Two views of batch 128 at 32 px are random tensors already in memory: like
``python -m byol_jax.bench`` without ``--input``, input decoding is not timed (lightly augments in
its DataLoader workers; byol_jax augments inside its timed step, so the comparison favours
lightly slightly). Prints one JSON line with images/s (source images; each gives two views).
"""

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn


class BYOL(nn.Module):
    """lightly's BYOL example model: online backbone + projector + predictor, momentum copies."""

    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x).flatten(start_dim=1)
        return self.prediction_head(self.projection_head(y))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(y).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps_per_repeat", type=int, default=3)
    parser.add_argument("--channels_last", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = BYOL()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x0 = torch.randn(shape).to(memory_format=memory_format)
    x1 = torch.randn(shape).to(memory_format=memory_format)
    total_steps = args.warmup_steps + args.repeats * args.steps_per_repeat

    def step(index: int) -> None:
        momentum = cosine_schedule(index, total_steps, 0.99, 1.0)
        update_momentum(model.backbone, model.backbone_momentum, m=momentum)
        update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
        p0, p1 = model(x0), model(x1)
        z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
        loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    index = 0
    for _ in range(args.warmup_steps):
        step(index)
        index += 1
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps_per_repeat):
            step(index)
            index += 1
        rates.append(args.batch_size * args.steps_per_repeat / (time.perf_counter() - start))
    print(
        json.dumps(
            {
                "peer": "lightly",
                "images_per_sec": round(statistics.median(rates), 2),
                "rates": [round(r, 2) for r in rates],
                "channels_last": args.channels_last,
                "batch_size": args.batch_size,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
