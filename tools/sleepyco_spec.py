"""SleePyCo (S. Lee, Y. Yu, S. Back, H. Seo and K. Lee, "SleePyCo: Automatic sleep scoring with feature pyramid
and contrastive learning", Expert Systems with Applications, 2024) as an ``edgetta export`` model SPEC, built
from the code and checkpoint that the MIT-licensed ``qlsleeps`` wheel ships (package ``qleegss``, copyright
EEGION Co., Ltd.). Nothing of that code is copied here: it is imported.

    pip install --no-deps qlsleeps            # the wheel needs only torch at import time for the model
    edgetta export tools/sleepyco_spec.py:sleepyco --input-shape 2,1,3000 --out runs/sleepyco \\
        --class-names W,N1,N2,N3,REM

The shipped network scores one 30-s single-channel EEG epoch at 100 Hz (3000 samples; its own predictor also
feeds up to ten epochs in a row) with a SleePyCo feature-pyramid backbone (Conv1d + BatchNorm1d + PReLU blocks
with channel gates) and one transformer classifier shared by the three pyramid levels; the prediction is the
sum of the three levels' logits over six classes, the first five W, N1, N2, N3, REM (the order its predictor's
class map implies). ``sleepyco`` returns that sum restricted to the five sleep stages, so the artifact fits the
sleep pipeline's W/N1/N2/N3/REM.
"""

from __future__ import annotations

from importlib import resources

import torch
import torch.nn as nn

STAGES = ("W", "N1", "N2", "N3", "REM")
CHECKPOINT = "ckpt_fold-01.pth"


class SleePyCoStages(nn.Module):
    """The shipped SleePyCo network with its three pyramid outputs summed and the five sleep-stage logits kept."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.net(x)
        total = outputs[0]
        for level in outputs[1:]:
            total = total + level
        return total[:, : len(STAGES)]


def load_checkpoint() -> dict[str, torch.Tensor]:
    """The checkpoint the wheel ships (tensors only: ``weights_only=True``), without DataParallel prefixes."""
    path = resources.files("qleegss.model") / CHECKPOINT
    with resources.as_file(path) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state.items()}


def sleepyco() -> nn.Module:
    """SleePyCo with the shipped weights, in eval mode (model SPEC for ``edgetta export``)."""
    try:
        from qleegss.model.sleepyco_net import MainModel
    except ImportError as exc:
        raise ImportError("SleePyCo's code comes from the qlsleeps wheel: pip install --no-deps qlsleeps") from exc
    net = MainModel()
    net.load_state_dict(load_checkpoint())
    return SleePyCoStages(net).eval()
