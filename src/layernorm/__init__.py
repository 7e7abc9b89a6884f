"""layernorm: exact, fast layer and RMS normalization for NumPy arrays on CPUs.

Array functions live in :mod:`layernorm.functional` and are re-exported here;
the Keras-style layers in :mod:`layernorm.layers`, the PyTorch-style modules
in :mod:`layernorm.modules`.
"""
__version__ = "0.1.0"

from .functional import (
    layer_norm,
    layer_norm_backward,
    rms_norm,
    rms_norm_backward,
    add_layer_norm,
    add_rms_norm,
)
from ._threads import set_num_threads, get_num_threads
from ._config import show_config
from . import initializers, regularizers, constraints
from .layers import LayerNormalization, RMSNormalization, Sequential, layer_normalization
from .modules import LayerNorm, RMSNorm

__all__ = [
    "layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward",
    "add_layer_norm", "add_rms_norm", "set_num_threads", "get_num_threads",
    "show_config", "initializers", "regularizers", "constraints",
    "LayerNormalization", "RMSNormalization", "Sequential", "layer_normalization",
    "LayerNorm", "RMSNorm", "__version__",
]
