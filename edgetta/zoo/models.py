"""Reference model families: ResNet-style CNN (BatchNorm or GroupNorm), 1-D sleep CNN,
a small vision transformer, and a MobileNet-style network with squeeze-excitation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(8, channels // 2) or 1, channels)
    raise ValueError(f"unknown norm kind {kind!r}: use 'bn' or 'gn'")


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3x3 convolutions and a residual add."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm2d(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm2d(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages of basic blocks, global average pool, linear head.

    ``blocks=3`` with ``width=16`` is ResNet-20 (He et al., 2016, Sec. 4.2).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, width: int = 16, blocks: int = 3, norm: str = "bn"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = _norm2d(norm, width)
        stages = []
        cin = width
        for i, mult in enumerate((1, 2, 4)):
            cout = width * mult
            layers = [
                BasicBlock(cin if j == 0 else cout, cout, 1 if (i == 0 or j > 0) else 2, norm) for j in range(blocks)
            ]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet_bn(in_channels: int = 3, num_classes: int = 10, width: int = 16, blocks: int = 3) -> ResNet:
    """ResNet with BatchNorm (blocks=3, width=16 gives ResNet-20)."""
    return ResNet(in_channels, num_classes, width, blocks, norm="bn")


def resnet_gn(in_channels: int = 3, num_classes: int = 10, width: int = 16, blocks: int = 3) -> ResNet:
    """The GroupNorm twin of :func:`resnet_bn` (batch-agnostic normalisation)."""
    return ResNet(in_channels, num_classes, width, blocks, norm="gn")


class SleepCNN(nn.Module):
    """Single-channel 1-D CNN for 30 s EEG epochs at 100 Hz ([B, 1, 3000]), in the spirit of
    DeepSleepNet's small-filter branch / TinySleepNet: wide first conv, BatchNorm1d, max-pooling,
    dropout, then a linear head over 5 AASM stages."""

    def __init__(self, num_classes: int = 5, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 50, stride=6, padding=24, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(8, 8),
            nn.Dropout(0.5),
            nn.Conv1d(width, width * 2, 8, padding=4, bias=False),
            nn.BatchNorm1d(width * 2),
            nn.ReLU(),
            nn.Conv1d(width * 2, width * 2, 8, padding=4, bias=False),
            nn.BatchNorm1d(width * 2),
            nn.ReLU(),
            nn.MaxPool1d(4, 4),
            nn.Dropout(0.5),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def sleep_cnn(num_classes: int = 5, width: int = 32) -> SleepCNN:
    return SleepCNN(num_classes, width)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al., 2021): patch embedding, class token,
    pre-norm blocks with multi-head attention and GELU MLPs, final LayerNorm, linear head."""

    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp: int = 128,
    ) -> None:
        super().__init__()
        n = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        tokens = self.blocks(tokens)
        return self.head(self.norm(tokens)[:, 0])


def tiny_vit(
    image_size: int = 32,
    patch: int = 4,
    in_channels: int = 3,
    num_classes: int = 10,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
) -> TinyViT:
    return TinyViT(image_size, patch, in_channels, num_classes, dim, depth, heads, mlp=2 * dim)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018) with a hard-sigmoid gate as in MobileNetV3."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 block (Howard et al., 2019): 1x1 expand, depthwise 3x3, SE, 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish()
        )
        self.se = SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class MobileNetBlockNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.Hardswish()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, 4, 1),
            InvertedResidual(width, width * 2, 4, 2),
            InvertedResidual(width * 2, width * 2, 4, 1),
        )
        self.head = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        return self.head(out.mean(dim=(2, 3)))


def mobilenet_block_net(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> MobileNetBlockNet:
    return MobileNetBlockNet(in_channels, num_classes, width)


FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "resnet_bn": resnet_bn,
    "resnet_gn": resnet_gn,
    "sleep_cnn": sleep_cnn,
    "tiny_vit": tiny_vit,
    "mobilenet": mobilenet_block_net,
}
