"""Keras-style weight regularizers.

Same class names, arguments, string identifiers and penalty formulas as
``keras.regularizers`` (Keras 3).  A regularizer is called on a weight array
and returns the penalty as a Python float.  Because this library computes
gradients itself, each built-in regularizer also has ``gradient(w)``, the
derivative of the penalty with respect to ``w``; :func:`penalty_gradient`
falls back to central finite differences for user callables without one.
"""
import math
import numbers

import numpy as np

from .initializers import _deserialize, _get, _registry, _serialize, _config_repr

__all__ = [
    "Regularizer", "L1", "L2", "L1L2", "OrthogonalRegularizer",
    "get", "serialize", "deserialize", "penalty_gradient",
]

_EPSILON = 1e-7  # keras.backend.epsilon()


def validate_float_arg(value, name):
    """Return ``float(value)``; ValueError unless a finite, non-negative number."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or math.isinf(value)
        or math.isnan(value)
        or value < 0
    ):
        raise ValueError(
            f"Invalid value for argument {name}: expected a non-negative float. "
            f"Received: {name}={value!r}"
        )
    return float(value)


class Regularizer:
    """Base class: ``regularizer(w)`` returns a penalty, ``gradient(w)`` its derivative."""

    def __call__(self, x):
        return 0.0

    def gradient(self, x):
        return np.zeros(np.shape(x))

    def get_config(self):
        raise NotImplementedError(f"{self} does not implement get_config()")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        try:
            return _config_repr(self)
        except NotImplementedError:  # a subclass without a config
            return f"{type(self).__name__}()"


class L1L2(Regularizer):
    """``l1 * sum(abs(x)) + l2 * sum(square(x))``."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = validate_float_arg(0.0 if l1 is None else l1, name="l1")
        self.l2 = validate_float_arg(0.0 if l2 is None else l2, name="l2")

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64)
        penalty = 0.0
        if self.l1:
            penalty += self.l1 * np.abs(x).sum()
        if self.l2:
            penalty += self.l2 * np.square(x).sum()
        return float(penalty)

    def gradient(self, x):
        x = np.asarray(x, dtype=np.float64)
        return self.l1 * np.sign(x) + 2.0 * self.l2 * x

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``l1 * sum(abs(x))``."""

    def __init__(self, l1=0.01):
        super().__init__(l1=0.01 if l1 is None else l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """``l2 * sum(square(x))``."""

    def __init__(self, l2=0.01):
        super().__init__(l2=0.01 if l2 is None else l2)

    def get_config(self):
        return {"l2": self.l2}


class OrthogonalRegularizer(Regularizer):
    """Penalize non-orthogonal rows (``mode="rows"``) or columns of a 2-D weight.

    ``factor * 0.5 * sum(abs(offdiag(N @ N.T))) / (n * (n - 1) / 2)`` where
    ``N`` is the weight with each row (or column) L2-normalized.
    """

    def __init__(self, factor=0.01, mode="rows"):
        self.factor = validate_float_arg(factor, name="factor")
        if mode not in {"rows", "columns"}:
            raise ValueError(
                "Invalid value for argument `mode`. Expected one of "
                f'{{"rows", "columns"}}. Received: mode={mode}'
            )
        self.mode = mode

    def _rows(self, x):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(
                f"Inputs to OrthogonalRegularizer must have rank 2. Received: inputs.shape={x.shape}"
            )
        return x if self.mode == "rows" else x.T

    def _parts(self, w):
        """(normalized rows, their norms, off-diagonal Gram matrix, penalty scale)."""
        norms = np.sqrt(np.square(w).sum(axis=1, keepdims=True))
        n = w / np.maximum(norms, _EPSILON)  # keras.ops.normalize
        size = w.shape[0]
        product = (n @ n.T) * (1.0 - np.eye(size))
        scale = self.factor * 0.5 / (size * (size - 1.0) / 2.0)
        return n, norms, product, scale

    def __call__(self, x):
        w = self._rows(x)
        _, _, product, scale = self._parts(w)
        return float(scale * np.abs(product).sum())

    def gradient(self, x):
        w = self._rows(x)
        n, norms, product, scale = self._parts(w)
        g = scale * np.sign(product)  # d penalty / d (N N^T), zero on the diagonal
        dn = (g + g.T) @ n
        # Back through N = W / max(|W_row|, eps): project out the radial part.
        big = norms > _EPSILON
        dw = np.where(big, (dn - n * (dn * n).sum(axis=1, keepdims=True)), dn)
        dw = dw / np.maximum(norms, _EPSILON)
        return dw if self.mode == "rows" else dw.T

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


def _numerical_gradient(fn, w):
    """Central differences of a scalar function of ``w`` (float64)."""
    w = np.array(w, dtype=np.float64)
    grad = np.empty_like(w)
    flat, gflat = w.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        h = 1e-6 * max(1.0, abs(flat[i]))
        old = flat[i]
        flat[i] = old + h
        plus = float(fn(w))
        flat[i] = old - h
        minus = float(fn(w))
        flat[i] = old
        gflat[i] = (plus - minus) / (2.0 * h)
    return grad


def penalty_gradient(regularizer, w):
    """Gradient of ``regularizer(w)`` with respect to ``w`` (float64 array).

    Uses ``regularizer.gradient`` when present, else central finite differences
    (cost: two penalty evaluations per weight element).
    """
    if hasattr(regularizer, "gradient"):
        return np.asarray(regularizer.gradient(w), dtype=np.float64)
    return _numerical_gradient(regularizer, w)


_TABLE = _registry([Regularizer, L1, L2, L1L2, OrthogonalRegularizer])


def get(identifier):
    """Return a regularizer from a string, config dict, class, instance or callable.

    Raises
    ------
    ValueError
        ``"Could not interpret regularizer identifier: ..."`` for anything else.
    """
    return _get(identifier, _TABLE, "regularizer")


def serialize(regularizer):
    """Config dict ``{"class_name": ..., "config": ...}`` of a regularizer."""
    return _serialize(regularizer)


def deserialize(config):
    """Inverse of :func:`serialize`."""
    return _deserialize(config, _TABLE, "regularizer")
