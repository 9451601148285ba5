"""Export an ImageNet-style ResNet-18 and report the export's stage times and the artifact's sizes.

The network is written here from the paper's description (He et al., 2016, Table 1: 7x7 stem, max-pool,
four stages of two basic blocks with 64/128/256/512 channels, global average pool, 1000-way linear), so the
benchmark needs no torchvision. Run:

    python tools/bench_export.py --size 64 --out runs/bench_export
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn

from edgetta.export import export_model
from edgetta.runtime.inspect import size_report


class Block(nn.Module):
    """Basic residual block: two 3x3 convolutions with BatchNorm, a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 1000 classes (He et al., 2016, Table 1)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_export")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNet18().eval()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time()
    export_model(model, torch.randn(args.batch, 3, args.size, args.size), out, progress=True)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"resnet18 {args.size}x{args.size}: exported and verified in {wall:.1f} s ({cpu:.1f} s CPU, all threads)")
    print(size_report(out))


if __name__ == "__main__":
    main()
