"""Model SPECs for the Fashion-MNIST demo loop: the bundled edge model's architecture and the demo teacher.

``edgetta.cloud.demo:fmnist_student`` builds the architecture of ``edgetta/assets/fmnist_resnet_bn`` (its
weights come from the artifact); ``edgetta.cloud.demo:fmnist_teacher`` is the same family with the demo
teacher's weights (``edgetta/assets/fmnist_teacher.safetensors``, made by ``tools/train_teacher.py``). The
teacher is a demo: the edge model fine-tuned on Fashion-MNIST with validation-only corruptions (speckle
noise, Gaussian blur), so it is stronger on noise and blur shifts; it is no foundation model.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from edgetta.errors import ConfigError

# Constructor kwargs of the bundled edge model (models/fmnist_resnet_bn.json).
FMNIST_KWARGS = {"in_channels": 1, "num_classes": 10, "width": 16, "blocks": 1}
TEACHER_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "fmnist_teacher.safetensors"


def fmnist_student() -> nn.Module:
    """The bundled edge model's architecture (ResNet with BatchNorm, width 16, one block per stage)."""
    from edgetta.zoo.models import resnet_bn

    return resnet_bn(**FMNIST_KWARGS)


def fmnist_teacher() -> nn.Module:
    """The demo teacher with its shipped weights."""
    from safetensors.torch import load_file

    if not TEACHER_WEIGHTS.is_file():
        raise ConfigError(f"demo teacher weights {TEACHER_WEIGHTS} are missing: run tools/train_teacher.py")
    model = fmnist_student()
    model.load_state_dict(load_file(str(TEACHER_WEIGHTS)))
    return model
