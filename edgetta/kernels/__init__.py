"""Small numpy building blocks shared by the runtime and the safety rails (no torch)."""

from edgetta.kernels.ema import ema_update, ema_update_dict
from edgetta.kernels.fisher import FisherAccumulator, fisher_penalty, fisher_penalty_grad
from edgetta.kernels.lame import affinity_matrix, lame, lame_energy
from edgetta.kernels.redundancy import RedundancyFilter, cosine_to
from edgetta.kernels.softmax import entropy, log_softmax, softmax

__all__ = [
    "FisherAccumulator",
    "RedundancyFilter",
    "affinity_matrix",
    "cosine_to",
    "ema_update",
    "ema_update_dict",
    "entropy",
    "fisher_penalty",
    "fisher_penalty_grad",
    "lame",
    "lame_energy",
    "log_softmax",
    "softmax",
]
