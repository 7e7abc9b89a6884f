"""Keras-style weight initializers.

Same class names, constructor arguments, string identifiers and formulas as
``keras.initializers`` (Keras 3), producing NumPy arrays.  ``get`` accepts
everything Keras' ``get`` accepts: ``None``, a string (``"ones"`` or
``"Ones"``, aliases such as ``"normal"``), a config dict
``{"class_name": ..., "config": ...}``, a class, an instance or any callable
``f(shape, dtype)``.

Random initializers draw from a :class:`numpy.random.Generator`.  As in
Keras, an initializer built with an integer seed (or with ``seed=None``, which
draws one seed at construction) returns the same values on every call; pass a
``numpy.random.Generator`` as ``seed`` to get fresh values on each call.
Values are NumPy's, not bit-identical to Keras' backends.

This module also holds the small identifier/config helpers shared with
:mod:`layernorm.regularizers` and :mod:`layernorm.constraints`.
"""
import inspect
import math
import numbers
import re

import numpy as np

__all__ = [
    "Initializer", "Constant", "Zeros", "Ones", "Identity", "RandomNormal",
    "RandomUniform", "TruncatedNormal", "VarianceScaling", "GlorotUniform",
    "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform",
    "Orthogonal", "OrthogonalInitializer", "IdentityInitializer",
    "get", "serialize", "deserialize",
]


# --------------------------------------------------------------------------
# helpers shared by initializers, regularizers and constraints
# --------------------------------------------------------------------------

def _to_snake_case(name):
    """Keras' ``to_snake_case``: ``"GlorotUniform"`` -> ``"glorot_uniform"``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _registry(classes, aliases=None):
    """Map class names and their snake_case spellings (plus aliases) to classes."""
    table = {cls.__name__: cls for cls in classes}
    table.update({_to_snake_case(cls.__name__): cls for cls in classes})
    table.update(aliases or {})
    return table


def _serialize(obj):
    """Config dict of a Keras-style object; ``None`` stays ``None``.

    A plain callable has no config, so it is returned as is (it round-trips
    within the process, which is all a function can do).
    """
    if obj is None or not hasattr(obj, "get_config"):
        return obj
    return {
        "module": type(obj).__module__,
        "class_name": type(obj).__name__,
        "config": obj.get_config(),
        "registered_name": None,
    }


def _deserialize(config, table, kind):
    if not isinstance(config, dict):
        raise TypeError(f"Expected a config dict for a {kind}, but received: {config!r}")
    cls = table.get(config.get("class_name"))
    if cls is None:
        raise ValueError(f"Could not interpret {kind} identifier: {config}")
    return cls.from_config(dict(config.get("config") or {}))


def _get(identifier, table, kind):
    """Keras' ``get`` logic, shared by the three submodules."""
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        obj = _deserialize(identifier, table, kind)
    elif isinstance(identifier, str):
        obj = table.get(identifier)
    else:
        obj = identifier
    if inspect.isclass(obj):
        obj = obj()
    if callable(obj):
        return obj
    raise ValueError(f"Could not interpret {kind} identifier: {identifier}")


def _as_dtype(dtype):
    """``numpy.dtype`` of a floating dtype spec; ``"bfloat16"`` via ml_dtypes; torch dtypes too."""
    if dtype is None:
        return np.dtype(np.float32)
    if type(dtype).__module__ == "torch":  # torch.float32 -> "float32", for code ported from PyTorch
        dtype = str(dtype).rsplit(".", 1)[-1]
    if isinstance(dtype, str) and dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - depends on the environment
            raise ValueError("dtype 'bfloat16' needs the ml_dtypes package") from None
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"Invalid dtype: {dtype!r}") from None
    if dt.kind != "f" and dt.name != "bfloat16":
        raise ValueError(f"Expected a floating-point dtype, but received: dtype={dtype!r}")
    return dt


def _config_repr(obj):
    args = ", ".join(f"{k}={v!r}" for k, v in obj.get_config().items())
    return f"{type(obj).__name__}({args})"


# --------------------------------------------------------------------------
# initializers
# --------------------------------------------------------------------------

class Initializer:
    """Base class: ``initializer(shape, dtype=None)`` returns an array.

    Subclasses implement ``_values(shape)`` (float64 values); the dtype cast
    is done here once.
    """

    def __call__(self, shape, dtype=None):
        shape = tuple(int(d) for d in shape)
        return np.asarray(self._values(shape)).astype(_as_dtype(dtype))

    def _values(self, shape):
        raise NotImplementedError("Initializer subclasses must implement `__call__()`.")

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def clone(self):
        return self.__class__.from_config(self.get_config())

    __repr__ = _config_repr


class Constant(Initializer):
    """Fill with ``value`` (a scalar, or an array broadcastable to the shape)."""

    def __init__(self, value=0.0):
        self.value = value

    def _values(self, shape):
        return np.broadcast_to(np.asarray(self.value, dtype=np.float64), shape)

    def get_config(self):
        value = self.value
        return {"value": value.tolist() if isinstance(value, np.ndarray) else value}


class Zeros(Initializer):
    """Fill with 0."""

    def _values(self, shape):
        return np.zeros(shape)


class Ones(Initializer):
    """Fill with 1."""

    def _values(self, shape):
        return np.ones(shape)


class Identity(Initializer):
    """``gain`` times the identity matrix (2-D shapes only)."""

    def __init__(self, gain=1.0):
        self.gain = gain

    def _values(self, shape):
        if len(shape) != 2:
            raise ValueError(
                "Identity matrix initializer can only be used for 2D matrices. "
                f"Received: shape={shape} of rank {len(shape)}."
            )
        return self.gain * np.eye(*shape)

    def get_config(self):
        return {"gain": self.gain}


IdentityInitializer = Identity


class RandomInitializer(Initializer):
    """Base of the random initializers: holds the seed."""

    def __init__(self, seed=None):
        if seed is not None and not isinstance(seed, (numbers.Integral, np.random.Generator)):
            raise ValueError(
                "`seed` argument should be an integer or a numpy.random.Generator. "
                f"Received: seed={seed!r}"
            )
        self._init_seed = seed
        # seed=None: draw one seed now, so that repeated calls agree (Keras' rule).
        self.seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed

    def _rng(self):
        if isinstance(self.seed, np.random.Generator):
            return self.seed
        return np.random.default_rng(int(self.seed))

    def get_config(self):
        seed = self._init_seed
        return {"seed": None if isinstance(seed, np.random.Generator) else seed}


def _truncated_normal(rng, shape, mean, stddev):
    """Normal draws, redrawing any beyond two standard deviations (Keras' rule)."""
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return mean + stddev * z


class RandomNormal(RandomInitializer):
    """Normal distribution with ``mean`` and ``stddev``."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean = mean
        self.stddev = stddev
        super().__init__(seed=seed)

    def _values(self, shape):
        return self._rng().normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


class TruncatedNormal(RandomNormal):
    """Normal distribution truncated (redrawn) at two standard deviations."""

    def _values(self, shape):
        return _truncated_normal(self._rng(), shape, self.mean, self.stddev)


class RandomUniform(RandomInitializer):
    """Uniform distribution on ``[minval, maxval)``."""

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval = minval
        self.maxval = maxval
        super().__init__(seed=seed)

    def _values(self, shape):
        return self._rng().uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {**super().get_config(), "minval": self.minval, "maxval": self.maxval}


def compute_fans(shape):
    """``(fan_in, fan_out)`` of a weight shape, as Keras computes them."""
    shape = tuple(shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    receptive_field = math.prod(shape[:-2])
    return int(shape[-2] * receptive_field), int(shape[-1] * receptive_field)


class VarianceScaling(RandomInitializer):
    """Scale-aware initializer: ``stddev = sqrt(scale / n)`` (or a uniform limit).

    ``n`` is fan_in, fan_out or their average (``mode``); ``distribution`` is
    ``"truncated_normal"`` (alias ``"normal"``), ``"untruncated_normal"`` or
    ``"uniform"``.
    """

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if scale <= 0.0:
            raise ValueError(f"Argument `scale` must be positive float. Received: scale={scale}")
        allowed_modes = {"fan_in", "fan_out", "fan_avg"}
        if mode not in allowed_modes:
            raise ValueError(f"Invalid `mode` argument: {mode}. Please use one of {allowed_modes}")
        distribution = str(distribution).lower()
        if distribution == "normal":
            distribution = "truncated_normal"
        allowed = {"uniform", "truncated_normal", "untruncated_normal"}
        if distribution not in allowed:
            raise ValueError(
                f"Invalid `distribution` argument: {distribution}. Please use one of {allowed}"
            )
        self.scale = scale
        self.mode = mode
        self.distribution = distribution
        super().__init__(seed=seed)

    def _values(self, shape):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        rng = self._rng()
        if self.distribution == "truncated_normal":
            # 0.8796... is the stddev of a unit normal truncated at +-2.
            return _truncated_normal(rng, shape, 0.0, math.sqrt(scale) / 0.87962566103423978)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(scale), shape)
        limit = math.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, shape)

    def get_config(self):
        return {
            **super().get_config(),
            "scale": self.scale, "mode": self.mode, "distribution": self.distribution,
        }


class _FixedVarianceScaling(VarianceScaling):
    """Glorot/He/Lecun: VarianceScaling with fixed arguments; config is the seed."""

    _args = {}

    def __init__(self, seed=None):
        super().__init__(seed=seed, **self._args)

    def get_config(self):
        return RandomInitializer.get_config(self)


class GlorotUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / (fan_in + fan_out))``."""
    _args = {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform"}


class GlorotNormal(_FixedVarianceScaling):
    """Truncated normal, ``stddev = sqrt(2 / (fan_in + fan_out))``."""
    _args = {"scale": 1.0, "mode": "fan_avg", "distribution": "truncated_normal"}


class LecunNormal(_FixedVarianceScaling):
    """Truncated normal, ``stddev = sqrt(1 / fan_in)``."""
    _args = {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}


class LecunUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(3 / fan_in)``."""
    _args = {"scale": 1.0, "mode": "fan_in", "distribution": "uniform"}


class HeNormal(_FixedVarianceScaling):
    """Truncated normal, ``stddev = sqrt(2 / fan_in)``."""
    _args = {"scale": 2.0, "mode": "fan_in", "distribution": "truncated_normal"}


class HeUniform(_FixedVarianceScaling):
    """Uniform on ``[-limit, limit]``, ``limit = sqrt(6 / fan_in)``."""
    _args = {"scale": 2.0, "mode": "fan_in", "distribution": "uniform"}


class Orthogonal(RandomInitializer):
    """``gain`` times a random orthogonal matrix (QR of a normal matrix).

    Shapes of rank > 2 are flattened to ``(prod(shape[:-1]), shape[-1])``.
    """

    def __init__(self, gain=1.0, seed=None):
        self.gain = gain
        super().__init__(seed=seed)

    def _values(self, shape):
        if len(shape) < 2:
            raise ValueError(
                "The tensor to initialize must be at least two-dimensional. "
                f"Received: shape={shape} of rank {len(shape)}."
            )
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))  # makes the distribution uniform (Haar)
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


OrthogonalInitializer = Orthogonal

_TABLE = _registry(
    [Constant, Zeros, Ones, Identity, RandomNormal, RandomUniform, TruncatedNormal,
     VarianceScaling, GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal,
     LecunUniform, Orthogonal],
    aliases={
        "normal": RandomNormal, "uniform": RandomUniform, "one": Ones, "zero": Zeros,
        "OrthogonalInitializer": Orthogonal, "orthogonal_initializer": Orthogonal,
        "IdentityInitializer": Identity, "identity_initializer": Identity,
    },
)


def get(identifier):
    """Return an initializer from a string, config dict, class, instance or callable.

    Raises
    ------
    ValueError
        ``"Could not interpret initializer identifier: ..."`` for anything else.
    """
    return _get(identifier, _TABLE, "initializer")


def serialize(initializer):
    """Config dict ``{"class_name": ..., "config": ...}`` of an initializer."""
    return _serialize(initializer)


def deserialize(config):
    """Inverse of :func:`serialize`."""
    return _deserialize(config, _TABLE, "initializer")
