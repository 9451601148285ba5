"""Small reference models (PyTorch) used by tests, training tools and the demo artifact.

Every family the exporter must handle has one small constructor here. Importing this package
imports torch; the device runtime never does.
"""

from edgetta.zoo.models import (
    mobilenet_block_net,
    resnet_bn,
    resnet_gn,
    sleep_cnn,
    tiny_vit,
)

__all__ = ["mobilenet_block_net", "resnet_bn", "resnet_gn", "sleep_cnn", "tiny_vit"]
