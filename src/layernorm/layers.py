"""Keras-style layers: ``LayerNormalization``, ``RMSNormalization``, ``Sequential``.

Drop-in NumPy counterparts of ``keras.layers.LayerNormalization`` and
``keras.layers.RMSNormalization`` (same arguments, weight names, configs and
error messages), plus a minimal ``Sequential`` and the R-keras style
``layer_normalization`` composition helper.  The math is the array functions
of :mod:`layernorm.functional`; this module only keeps the bookkeeping
(weights, gradients, regularizers, constraints, names, configs).

Every layer also has ``backward(dy)``: it returns the gradient with respect to
the input of the last call and leaves the weight gradients (penalty
gradients of the regularizers included) in ``layer.gradients``.
"""
import numbers

import numpy as np

from . import constraints, initializers, regularizers
from . import functional as F
from .initializers import _as_dtype, _to_snake_case

__all__ = ["Layer", "LayerNormalization", "RMSNormalization", "Sequential", "layer_normalization"]

_name_counts = {}  # name prefix -> auto names handed out so far


def _unique_name(prefix):
    """``prefix``, ``prefix_1``, ``prefix_2``, ... (Keras' auto naming)."""
    count = _name_counts.get(prefix, 0)
    _name_counts[prefix] = count + 1
    return prefix if count == 0 else f"{prefix}_{count}"


def _check_name(name, cls):
    if name is None:
        return _unique_name(_to_snake_case(cls.__name__))
    if not isinstance(name, str) or "/" in name:
        raise ValueError(
            "Argument `name` must be a string and cannot contain character `/`. "
            f"Received: name={name!r} (of type {type(name)})"
        )
    return name


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_axis(axis):
    """Constructor-time check: an int, or a list/tuple of ints (kept as a list)."""
    if _is_int(axis):
        return int(axis)
    if isinstance(axis, (list, tuple)) and all(_is_int(a) for a in axis):
        return [int(a) for a in axis]
    raise TypeError(
        "Expected an int or a list/tuple of ints for the argument 'axis', "
        f"but received: {axis!r}"
    )


def _canonical_axes(axis, ndim):
    """Sorted non-negative axes; ValueError for empty, out-of-range or repeated axes."""
    axes = [axis] if _is_int(axis) else list(axis)
    if not axes:
        raise ValueError("Expected at least one axis in the argument 'axis', but received: []")
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for an array with dimension {ndim}.")
    canonical = sorted(a % ndim for a in axes)
    if len(set(canonical)) != len(canonical):
        raise ValueError(
            f"Duplicate axes are not allowed: axis={axis} names an axis twice "
            f"for an input of rank {ndim}."
        )
    return canonical


def _check_shape(input_shape):
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(
            f"Invalid input shape type: expected tuple or list. Received: {type(input_shape)}"
        )
    return tuple(None if d is None else int(d) for d in input_shape)


def _parse_dtype(dtype):
    """Name and weight dtype of a dtype spec (Keras policy dicts and mixed names too)."""
    if isinstance(dtype, dict):  # a serialized keras DTypePolicy
        dtype = dtype.get("config", {}).get("name", "float32")
    if isinstance(dtype, str) and dtype.startswith("mixed_"):
        return dtype, np.dtype(np.float32)  # Keras' mixed policies keep float32 weights
    weight_dtype = _as_dtype(dtype)
    return weight_dtype.name, weight_dtype


class Layer:
    """Bookkeeping shared by the Keras-style normalization layers.

    Subclasses define ``_create_weights(shape)``, ``_forward(x, axis)`` (which
    stores what ``_backward`` needs in ``self._cache``) and
    ``_backward(dy) -> (dx, {weight name: gradient})``.
    """

    def __init__(self, axis=-1, epsilon=1e-3, trainable=True, name=None, dtype="float32"):
        self.axis = _check_axis(axis)
        if not isinstance(epsilon, numbers.Real) or not epsilon >= 0:
            raise ValueError(f"Expected a non-negative number for 'epsilon', but received: {epsilon!r}")
        self.epsilon = float(epsilon)
        self.name = _check_name(name, type(self))
        self.trainable = bool(trainable)
        self.dtype, self._weight_dtype = _parse_dtype(dtype)
        self.built = False
        self.gradients = {}
        self._specs = []  # (weight name, regularizer, constraint), in creation order
        self._cache = None

    # -- building -----------------------------------------------------------

    def build(self, input_shape):
        """Canonicalize ``axis`` for inputs of ``input_shape`` and create the weights."""
        shape = _check_shape(input_shape)
        self.axis = _canonical_axes(self.axis, len(shape))
        self._axes = tuple(self.axis)
        param_shape = tuple(shape[a] for a in self._axes)
        if None in param_shape:
            raise ValueError(
                f"Layer '{self.name}' needs known sizes on the normalized axes {self.axis}, "
                f"but received input_shape={tuple(input_shape)}."
            )
        self._param_shape = param_shape
        self._ndim = len(shape)
        # A plain -1 lets the array functions take their cheapest path.
        self._call_axis = -1 if self._axes == (len(shape) - 1,) else self._axes
        self._specs = []
        self._create_weights(param_shape)
        self.built = True

    def _add_weight(self, name, shape, initializer, regularizer=None, constraint=None):
        value = np.array(initializer(shape, dtype=self._weight_dtype.name), dtype=self._weight_dtype)
        if value.shape != shape:
            raise ValueError(
                f"The initializer of weight '{name}' of layer '{self.name}' returned shape "
                f"{value.shape}, expected {shape}."
            )
        setattr(self, name, value)
        self._specs.append((name, regularizer, constraint))

    def compute_output_shape(self, input_shape):
        """Output shape (= ``input_shape``), after validating ``axis`` against it."""
        shape = _check_shape(input_shape)
        _canonical_axes(self.axis, len(shape))
        return shape

    # -- forward / backward -------------------------------------------------

    def __call__(self, inputs, training=None):
        """Normalize ``inputs`` (built on the first call); ``training`` is ignored."""
        x = np.asarray(inputs)
        if x.dtype.kind in "biu":  # Keras casts non-float inputs to the layer dtype
            x = x.astype(self._weight_dtype)
        if not self.built:
            self.build(x.shape)
        try:
            return self._forward(x, self._call_axis if x.ndim == self._ndim else self._axes)
        except ValueError:
            self._check_input(x.shape)  # raise a clearer message if the shape is the cause
            raise

    def _check_input(self, shape):
        ndim = len(shape)
        if self._axes[-1] >= ndim or tuple(shape[a] for a in self._axes) != self._param_shape:
            raise ValueError(
                f"Input of shape {shape} is incompatible with layer '{self.name}', "
                f"built for sizes {self._param_shape} on axes {self.axis}."
            )

    def backward(self, dy):
        """Gradient with respect to the input of the last call.

        ``dy`` is converted to the input's dtype.  Leaves the weight gradients
        (plus regularizer penalty gradients) in ``self.gradients``; a frozen
        layer (``trainable=False``) leaves it empty.
        """
        if self._cache is None:
            raise RuntimeError(f"backward() called on layer '{self.name}' before it was called on an input.")
        x = self._cache[0]
        dy = np.asarray(dy, dtype=x.dtype)  # the kernels want dy in x's dtype
        if dy.shape != x.shape:
            raise ValueError(f"Expected dy of shape {x.shape} (the last input's), but received {dy.shape}.")
        dx, grads = self._backward(dy)
        gradients = {}
        if self.trainable:
            for name, regularizer, _ in self._specs:
                weight, grad = getattr(self, name), grads[name]
                if regularizer is not None:
                    grad = grad + regularizers.penalty_gradient(regularizer, weight)
                gradients[name] = np.asarray(grad).astype(weight.dtype, copy=False)
        self.gradients = gradients
        return dx

    # -- weights ------------------------------------------------------------

    @property
    def weights(self):
        """The weight arrays themselves (updating them in place updates the layer)."""
        return [getattr(self, name) for name, _, _ in self._specs]

    @property
    def trainable_weights(self):
        return self.weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        return [] if self.trainable else self.weights

    def get_weights(self):
        """Copies of the weights, in creation order."""
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Copy ``weights`` (a list like :meth:`get_weights`' result) into the layer."""
        current = self.weights
        weights = list(weights)
        if len(weights) != len(current):
            raise ValueError(
                f"You called `set_weights(weights)` on layer '{self.name}' with a weight list "
                f"of length {len(weights)}, but the layer was expecting {len(current)} weights."
            )
        values = [np.asarray(w) for w in weights]
        for ref, value in zip(current, values):  # check all before writing any
            if ref.shape != value.shape:
                raise ValueError(
                    f"Layer '{self.name}' weight shape {ref.shape} is not compatible with "
                    f"provided weight shape {value.shape}."
                )
        for ref, value in zip(current, values):
            ref[...] = value

    @property
    def losses(self):
        """Regularization penalties of the trainable weights, as floats."""
        if not self.trainable:
            return []
        return [float(reg(getattr(self, name))) for name, reg, _ in self._specs if reg is not None]

    def apply_constraints(self):
        """Project the trainable weights with their constraints, in place.

        Keras' optimizers do this after every update; call it after yours.
        """
        if not self.trainable:
            return
        for name, _, constraint in self._specs:
            if constraint is not None:
                weight = getattr(self, name)
                weight[...] = constraint(weight)

    # -- config ---------------------------------------------------------------

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "dtype": self.dtype,
                "axis": self.axis, "epsilon": self.epsilon}

    @classmethod
    def from_config(cls, config):
        """Instantiate from :meth:`get_config` output (Keras configs work too)."""
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


class LayerNormalization(Layer):
    """Layer normalization, as ``keras.layers.LayerNormalization``.

    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta`` with the biased
    variance over ``axis``; ``gamma``/``beta`` span the normalized axes.

    Parameters
    ----------
    axis : int or list/tuple of int
        Axes to normalize over; canonicalized (sorted, non-negative) on build.
    epsilon : float
        Added to the variance.
    center, scale : bool
        Create and use ``beta`` / ``gamma``.
    beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer,
    beta_constraint, gamma_constraint
        Anything :func:`layernorm.initializers.get` (``regularizers.get``,
        ``constraints.get``) accepts.
    trainable : bool
        When False, ``backward`` computes only the input gradient.
    name : str, optional
        Defaults to a unique ``layer_normalization``, ``layer_normalization_1``, ...
    dtype : str or dtype
        Weight dtype.  float16/bfloat16 inputs are computed in float32;
        the output has the input's dtype.
    rms_scaling : bool
        Only False is supported (accepted so Keras configs load); use
        :class:`RMSNormalization` for RMS normalization.
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None,
                 trainable=True, name=None, dtype="float32", rms_scaling=False):
        if rms_scaling:
            raise NotImplementedError(
                "rms_scaling=True is not supported; use layernorm.RMSNormalization instead."
            )
        self.center = bool(center)
        self.scale = bool(scale)
        self.rms_scaling = False
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.gamma = self.beta = None
        super().__init__(axis, epsilon, trainable, name, dtype)

    def _create_weights(self, shape):
        self.gamma = self.beta = None
        if self.scale:
            self._add_weight("gamma", shape, self.gamma_initializer,
                             self.gamma_regularizer, self.gamma_constraint)
        if self.center:
            self._add_weight("beta", shape, self.beta_initializer,
                             self.beta_regularizer, self.beta_constraint)

    def _forward(self, x, axis):
        y, mean, rstd = F.layer_norm(x, axis, self.gamma, self.beta, self.epsilon,
                                     return_stats=True)
        self._cache = (x, mean, rstd)
        return y

    def _backward(self, dy):
        x, mean, rstd = self._cache
        dx, dgamma, dbeta = F.layer_norm_backward(dy, x, mean, rstd, self._axes, self.gamma)
        return dx, {"gamma": dgamma, "beta": dbeta}

    def get_config(self):
        return {
            **super().get_config(),
            "center": self.center,
            "scale": self.scale,
            "rms_scaling": self.rms_scaling,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
        }


class RMSNormalization(Layer):
    """RMS normalization, as Keras 3's ``keras.layers.RMSNormalization``.

    ``y = x / sqrt(mean(x**2) + epsilon) * scale`` over ``axis``; the weight
    is named ``scale`` (initialized to ones), as in Keras.

    Parameters
    ----------
    axis : int or list/tuple of int
    epsilon : float
    trainable, name, dtype
        As for :class:`LayerNormalization`.
    """

    def __init__(self, axis=-1, epsilon=1e-6, trainable=True, name=None, dtype="float32"):
        self.scale = None
        super().__init__(axis, epsilon, trainable, name, dtype)

    def _create_weights(self, shape):
        self._add_weight("scale", shape, initializers.Ones())

    def _forward(self, x, axis):
        y, rrms = F.rms_norm(x, axis, self.scale, self.epsilon, return_stats=True)
        self._cache = (x, rrms)
        return y

    def _backward(self, dy):
        x, rrms = self._cache
        dx, dscale = F.rms_norm_backward(dy, x, rrms, self._axes, self.scale)
        return dx, {"scale": dscale}


class Sequential:
    """A stack of layers applied in order, as a minimal ``keras.Sequential``.

    Accepts any layer or module of this package and, for forward-only use,
    any callable.  ``backward(dy)`` runs the layers' ``backward`` in reverse.

    Parameters
    ----------
    layers : iterable, optional
        Initial layers.
    name : str, optional
        Defaults to a unique ``sequential``, ``sequential_1``, ...
    """

    def __init__(self, layers=None, name=None):
        self.name = _check_name(name, type(self))
        self._layers = []
        for layer in layers or []:
            self.add(layer)

    @property
    def layers(self):
        return list(self._layers)

    def add(self, layer):
        """Append ``layer`` (anything callable)."""
        if not callable(layer):
            raise TypeError(
                f"Only layers, modules or callables can be added to a Sequential model. "
                f"Received: {layer!r} (of type {type(layer)})"
            )
        name = getattr(layer, "name", None)
        if name is not None and any(getattr(other, "name", None) == name for other in self._layers):
            raise ValueError(
                "All layers added to a Sequential model should have unique names. "
                f"Name '{name}' is already the name of a layer in this model."
            )
        self._layers.append(layer)

    def pop(self):
        """Remove and return the last layer."""
        if not self._layers:
            raise IndexError(f"There are no layers in the model '{self.name}'.")
        return self._layers.pop()

    def __call__(self, inputs, training=None):
        x = inputs
        for layer in self._layers:
            x = layer(x)
        return x

    def backward(self, dy):
        """Back-propagate ``dy`` through every layer, last to first; returns dx."""
        for layer in reversed(self._layers):
            if not hasattr(layer, "backward"):
                raise TypeError(
                    f"Sequential.backward needs every layer to have a backward(); "
                    f"{layer!r} is a plain callable (forward-only)."
                )
        for layer in reversed(self._layers):
            dy = layer.backward(dy)
        return dy

    def _collect(self, attr):
        return [w for layer in self._layers for w in getattr(layer, attr, [])]

    @property
    def weights(self):
        return self._collect("weights")

    @property
    def trainable_weights(self):
        return self._collect("trainable_weights")

    @property
    def losses(self):
        return self._collect("losses")

    def __len__(self):
        return len(self._layers)

    def __repr__(self):
        return f"<Sequential name={self.name}, layers={len(self._layers)}>"


def layer_normalization(object=None, **kwargs):
    """Create a :class:`LayerNormalization` and compose it with ``object``.

    Parameters
    ----------
    object : None, Sequential or array-like
        ``None``: return the layer.  A :class:`Sequential`: append the layer
        and return the model.  An array: return the layer's output.
    **kwargs
        Arguments of :class:`LayerNormalization`.
    """
    layer = LayerNormalization(**kwargs)
    if object is None:
        return layer
    if isinstance(object, Sequential):
        object.add(layer)
        return object
    return layer(object)
