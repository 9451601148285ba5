"""Small reference models (PyTorch) used by tests, training tools and the demo artifact.

Every family the exporter must handle has one small constructor here. This is model code for export
and training: importing it needs torch (``pip install 'edgetta[export]'``); the device runtime never does.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # a device install: say what to install instead of a bare "No module named torch"
    raise ImportError(
        "edgetta.zoo holds PyTorch models for export and training and needs torch: pip install 'edgetta[export]'"
    ) from exc

from edgetta.zoo.models import (  # noqa: E402
    mobilenet_block_net,
    resnet_bn,
    resnet_gn,
    sleep_cnn,
    tiny_vit,
)

__all__ = ["mobilenet_block_net", "resnet_bn", "resnet_gn", "sleep_cnn", "tiny_vit"]
