"""A compact single-channel sleep-staging network with BatchNorm, after TinySleepNet's encoder.

TinySleepNet (Supratak & Guo, EMBC 2020, Fig. 1): one wide convolution (filter fs/2, stride fs/16) with
BatchNorm and ReLU, max-pool 8, dropout, three small convolutions (filter 8) with BatchNorm and ReLU,
max-pool 4, dropout; here followed by global average pooling and a linear head over the 5 AASM stages
instead of TinySleepNet's LSTM over epoch sequences.

Causality: the network is a **single-epoch** classifier. Stage t depends only on epoch t (30 s that are
fully recorded when the epoch is staged), never on later epochs, so a bedside monitor never waits for the
future; the convolutions' "same" padding acts inside the epoch only. Cross-epoch context at deployment
comes from the causal running z-score and the causal median filter in ``edgetta.sleep``.

Model code for training and export (needs torch); the device runtime runs the exported artifact.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["INPUT_SHAPE", "TinySleepNet", "tiny_sleep_net"]

INPUT_SHAPE = (1, 3000)  # one channel, 30 s at 100 Hz


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv1d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]


class TinySleepNet(nn.Module):
    """[B, 1, 3000] z-scored EEG (100 Hz) -> [B, 5] stage logits (W, N1, N2, N3, REM)."""

    def __init__(self, num_classes: int = 5, width: int = 32, rate: float = 100.0, dropout: float = 0.5) -> None:
        super().__init__()
        wide, stride = int(rate // 2), max(1, int(rate // 16))
        self.features = nn.Sequential(
            *_conv_bn(1, width, wide, stride),
            nn.MaxPool1d(8, 8),
            nn.Dropout(dropout),
            *_conv_bn(width, width, 8),
            *_conv_bn(width, width, 8),
            *_conv_bn(width, width, 8),
            nn.MaxPool1d(4, 4),
            nn.Dropout(dropout),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def tiny_sleep_net(num_classes: int = 5, width: int = 32) -> TinySleepNet:
    """The default configuration (about 27k weights; a few hundred kB as an artifact)."""
    return TinySleepNet(num_classes, width)
