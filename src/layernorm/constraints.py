"""Keras-style weight constraints.

Same class names, arguments, string identifiers and formulas as
``keras.constraints`` (Keras 3).  A constraint maps a weight array to its
projection; layers apply them in :meth:`apply_constraints`, which is what
Keras' optimizers do after every update.
"""
import numpy as np

from .initializers import _config_repr, _deserialize, _get, _registry, _serialize

__all__ = [
    "Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm",
    "get", "serialize", "deserialize",
]

_EPSILON = 1e-7  # keras.backend.epsilon()


class Constraint:
    """Base class: ``constraint(w)`` returns the projected weight (here: ``w``)."""

    def __call__(self, w):
        return np.asarray(w)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    __repr__ = _config_repr


def _norms(w, axis):
    return np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))


def _rescale(w, axis, new_norm):
    """``w * new_norm(norms) / (eps + norms)``, the Keras norm-constraint formula."""
    w = np.asarray(w)
    norms = _norms(w, axis)
    return (w * (new_norm(norms) / (_EPSILON + norms))).astype(w.dtype, copy=False)


class MinMaxNorm(Constraint):
    """Rescale so the norm along ``axis`` moves into ``[min_value, max_value]``.

    The new norm is ``rate * clip(norm, min_value, max_value) + (1 - rate) * norm``.
    """

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value = min_value
        self.max_value = max_value
        self.rate = rate
        self.axis = axis

    def __call__(self, w):
        return _rescale(w, self.axis, lambda norms: (
            self.rate * np.clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value,
                "rate": self.rate, "axis": self.axis}


class MaxNorm(Constraint):
    """Rescale so the norm along ``axis`` is at most ``max_value``."""

    def __init__(self, max_value=2, axis=0):
        self.max_value = max_value
        self.axis = axis

    def __call__(self, w):
        return _rescale(w, self.axis, lambda norms: np.clip(norms, 0, self.max_value))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Clip negative weights to 0."""

    def __call__(self, w):
        w = np.asarray(w)
        return np.maximum(w, 0).astype(w.dtype, copy=False)


class UnitNorm(Constraint):
    """Rescale to unit norm along ``axis``."""

    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w):
        w = np.asarray(w)
        return (w / (_EPSILON + _norms(w, self.axis))).astype(w.dtype, copy=False)

    def get_config(self):
        return {"axis": self.axis}


_TABLE = _registry([Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm])


def get(identifier):
    """Return a constraint from a string, config dict, class, instance or callable.

    Raises
    ------
    ValueError
        ``"Could not interpret constraint identifier: ..."`` for anything else.
    """
    return _get(identifier, _TABLE, "constraint")


def serialize(constraint):
    """Config dict ``{"class_name": ..., "config": ...}`` of a constraint."""
    return _serialize(constraint)


def deserialize(config):
    """Inverse of :func:`serialize`."""
    return _deserialize(config, _TABLE, "constraint")
