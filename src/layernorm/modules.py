"""PyTorch-style modules: ``LayerNorm`` and ``RMSNorm``.

NumPy counterparts of ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``: same
constructor arguments, parameter names, ``repr``, input validation (as
ValueError, with PyTorch's wording) and ``state_dict`` keys.  They normalize
the last ``len(normalized_shape)`` axes with the array functions of
:mod:`layernorm.functional`.

``backward(dy)`` returns the gradient with respect to the input of the last
call and leaves the parameter gradients in ``module.gradients``
(``{"weight": ..., "bias": ...}``), where PyTorch would fill ``param.grad``.
"""
import collections
import numbers

import numpy as np

from . import functional as F
from .initializers import _as_dtype

__all__ = ["LayerNorm", "RMSNorm"]

_IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _normalized_shape(normalized_shape):
    """PyTorch's rule: an int means ``(n,)``; otherwise a sequence of sizes."""
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(normalized_shape)
    except TypeError:
        raise TypeError(
            "normalized_shape must be an int or a sequence of ints, "
            f"but received: {normalized_shape!r}"
        ) from None
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"normalized_shape must contain only ints, but received: {normalized_shape!r}")
    if any(d < 0 for d in shape):
        raise ValueError(f"normalized_shape must not contain negative sizes, but received: {list(shape)}")
    return tuple(int(d) for d in shape)


def _check_eps(eps, allow_none):
    if eps is None and allow_none:
        return None
    if not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, but received: eps={eps!r}")
    return float(eps)


class _NormModule:
    """Parameter, state-dict and gradient bookkeeping shared by LayerNorm and RMSNorm.

    Subclasses set the parameters (``None`` when absent) in ``_param_names``
    order and define ``_forward(x)`` (filling ``self._cache``) and
    ``_backward(dy) -> (dx, {name: gradient})``.
    """

    _param_names = ("weight",)

    def __init__(self, normalized_shape, eps, elementwise_affine, dtype):
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = _as_dtype(dtype)
        self.training = True
        self.gradients = {}
        self._cache = None
        self._axes = tuple(range(-len(self.normalized_shape), 0))
        # A plain -1 lets the array functions take their cheapest path.
        self._call_axis = -1 if len(self._axes) == 1 else self._axes

    # -- forward / backward -------------------------------------------------

    def __call__(self, input):
        """Normalize ``input`` over its last ``len(normalized_shape)`` axes."""
        x = np.asarray(input)
        if x.dtype.kind in "biu":  # integer data is normalized in the parameter dtype
            x = x.astype(self.dtype)
        if x.shape[x.ndim - len(self.normalized_shape):] != self.normalized_shape or not self._axes:
            self._raise_shape_error(x)
        return self._forward(x)

    forward = __call__

    def _raise_shape_error(self, x):
        shape = list(self.normalized_shape)
        if not shape:
            raise ValueError(
                "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
                "least one element, but got normalized_shape = []"
            )
        raise ValueError(
            f"Given normalized_shape={shape}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size {list(x.shape)}"
        )

    def backward(self, dy):
        """Gradient with respect to the input of the last call.

        ``dy`` is converted to the input's dtype.  Leaves the parameter
        gradients in ``self.gradients``.
        """
        if self._cache is None:
            raise RuntimeError(f"backward() called on {type(self).__name__} before it was called on an input.")
        dy = np.asarray(dy, dtype=self._cache[0].dtype)  # the kernels want dy in x's dtype
        if dy.shape != self._cache[0].shape:
            raise ValueError(
                f"Expected dy of shape {self._cache[0].shape} (the last input's), but received {dy.shape}."
            )
        dx, grads = self._backward(dy)
        self.gradients = {
            name: np.asarray(grads[name]).astype(param.dtype, copy=False)
            for name, param in self.named_parameters()
        }
        return dx

    # -- parameters and state -----------------------------------------------

    def named_parameters(self):
        """``(name, array)`` for each parameter that exists."""
        for name in self._param_names:
            param = getattr(self, name)
            if param is not None:
                yield name, param

    def parameters(self):
        """The parameter arrays (updating them in place updates the module)."""
        for _, param in self.named_parameters():
            yield param

    def state_dict(self):
        """Ordered ``{name: array}``; the arrays are the parameters themselves, as in PyTorch."""
        return collections.OrderedDict(self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters from ``state_dict`` (values: anything ``numpy.asarray`` takes).

        Shapes must match; with ``strict`` the keys must match too.  Nothing is
        written unless every check passes.  Returns ``(missing_keys, unexpected_keys)``.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        if strict and missing:
            errors.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
        if strict and unexpected:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
        values = {k: np.asarray(state_dict[k]) for k in own if k in state_dict}
        for k, value in values.items():
            if value.shape != own[k].shape:
                errors.append(
                    f"size mismatch for {k}: copying a param with shape {value.shape} from "
                    f"checkpoint, the shape in current model is {own[k].shape}."
                )
        if errors:
            raise ValueError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors)
            )
        for k, value in values.items():
            own[k][...] = value
        return _IncompatibleKeys(missing, unexpected)

    def train(self, mode=True):
        """Set ``training`` (no effect on the result: statistics are always per sample)."""
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _new_param(self, fill):
        return np.full(self.normalized_shape, fill, dtype=self.dtype)

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class LayerNorm(_NormModule):
    """Layer normalization over the last ``len(normalized_shape)`` axes, as ``torch.nn.LayerNorm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        Trailing shape to normalize over; an int ``n`` means ``(n,)``.
    eps : float
        Added to the variance.
    elementwise_affine : bool
        Create ``weight`` (ones) and, if ``bias``, ``bias`` (zeros).
    bias : bool
        When False, ``self.bias is None``.
    dtype : numpy dtype
        Parameter dtype.
    """

    _param_names = ("weight", "bias")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__(normalized_shape, _check_eps(eps, False), elementwise_affine, dtype)
        self.weight = self._new_param(1) if self.elementwise_affine else None
        self.bias = self._new_param(0) if self.elementwise_affine and bias else None

    def _forward(self, x):
        y, mean, rstd = F.layer_norm(x, self._call_axis, self.weight, self.bias, self.eps,
                                     return_stats=True)
        self._cache = (x, mean, rstd)
        return y

    def _backward(self, dy):
        x, mean, rstd = self._cache
        dx, dweight, dbias = F.layer_norm_backward(dy, x, mean, rstd, self._axes, self.weight)
        return dx, {"weight": dweight, "bias": dbias}

    def extra_repr(self):
        text = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        # PyTorch's classic repr has no bias field; say so only when it is off.
        return text if self.bias is not None or not self.elementwise_affine else text + ", bias=False"


class RMSNorm(_NormModule):
    """RMS normalization over the last ``len(normalized_shape)`` axes, as ``torch.nn.RMSNorm``.

    ``y = x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        Trailing shape to normalize over; an int ``n`` means ``(n,)``.
    eps : float or None
        Added to the mean square; None means the machine epsilon of float32
        (of float64 for float64 inputs), as in PyTorch.
    elementwise_affine : bool
        Create ``weight`` (ones).
    dtype : numpy dtype
        Parameter dtype.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__(normalized_shape, _check_eps(eps, True), elementwise_affine, dtype)
        self.weight = self._new_param(1) if self.elementwise_affine else None

    def _forward(self, x):
        y, rrms = F.rms_norm(x, self._call_axis, self.weight, self.eps, return_stats=True)
        self._cache = (x, rrms)
        return y

    def _backward(self, dy):
        x, rrms = self._cache
        dx, dweight = F.rms_norm_backward(dy, x, rrms, self._axes, self.weight)
        return dx, {"weight": dweight}

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
