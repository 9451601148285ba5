"""Names fixed by the artifact contract (version 2): files, format, graph input/output roles, naming rules.

A manifest maps each role (the keys of its ``inputs``/``outputs`` tables) to a graph name; in contract v1
every exporter writes the role itself as the graph name, so the constants below are both.
"""

from __future__ import annotations

FORMAT_NAME = "edgetta.artifact"
FORMAT_VERSION = 2
# Versions this edgetta reads. Version 1 artifacts lack the soft-target inputs (SOFT_INPUT_ROLES).
READ_VERSIONS = (1, 2)
# The first edgetta release whose exporter writes contract version 2 (named in "re-export" errors).
SOFT_TARGET_SINCE = "0.1.0"

MANIFEST_FILE = "manifest.json"
INFER_FILE = "infer.onnx"
ADAPT_FILE = "adapt.onnx"
PARAMS_FILE = "params.safetensors"
# The frozen weights shared by both graphs as ONNX external data (absent in artifacts from before it existed).
WEIGHTS_FILE = "weights.bin"
GRAPHS = ("infer", "adapt")

# Prefixes of the optional tensors in params.safetensors next to the graph-input parameters.
FISHER_PREFIX = "fisher/"
ANCHOR_PREFIX = "anchor/"
SOURCE_FEATURE_MEAN = "source/feature_mean"

NORM_KINDS = ("batchnorm", "layernorm", "groupnorm", "instancenorm")

# Graph inputs by role.
DATA_INPUT = "input"  # the model input (its graph name is the manifest's input.name)
BN_ALPHA = "bn_alpha"  # scalar blend of batch and running BN statistics: 0 = source model, 1 = Tent
ENTROPY_WEIGHT = "entropy_weight"  # adapt graph: per-sample weight of the entropy term
CE_WEIGHT = "ce_weight"  # adapt graph: per-sample weight of the pseudo-label cross-entropy term
INPUT_ROLES = (BN_ALPHA, ENTROPY_WEIGHT, CE_WEIGHT)
# Contract v2 adapt-graph inputs: the loss gains sum_i soft_weight_i * (-sum_c soft_target_ic log softmax(z_i)_c)
# (the mean-teacher term of CoTTA, Wang et al. CVPR 2022, Eq. 2). Absent from version 1 artifacts.
SOFT_TARGET = "soft_target"  # adapt graph: [N, C] target probabilities (a teacher's)
SOFT_WEIGHT = "soft_weight"  # adapt graph: [N] per-sample weight of the soft cross-entropy term
SOFT_INPUT_ROLES = (SOFT_TARGET, SOFT_WEIGHT)

# Graph outputs by role.
LOGITS = "logits"
FEATURES = "features"  # the classifier's input; absent (None) when the exporter found no classifier
ENTROPY = "entropy"  # adapt graph: per-sample entropy
LOSS = "loss"  # adapt graph: the weighted loss whose gradients it returns
OUTPUT_ROLES = (LOGITS, FEATURES, ENTROPY, LOSS)
OPTIONAL_OUTPUT_ROLES = (FEATURES,)


def grad_name(param: str) -> str:
    """The adapt-graph output holding the gradient of the loss with respect to the input ``param``."""
    return f"{param}.grad"


def batch_stat_names(module: str) -> tuple[str, str]:
    """The graph outputs holding a BatchNorm layer's batch mean and biased batch variance."""
    return f"{module}.batch_mean", f"{module}.batch_var"
