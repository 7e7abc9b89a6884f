"""Axis canonicalization and layout plans.

Every call is mapped onto the kernels' x[outer][reduce][inner] layout:
- normalized axes trailing and contiguous: rows (inner == 1), no copy;
- one block of adjacent normalized axes followed by others: strided, no copy;
- anything else: transposed to a contiguous copy with the normalized axes
  last, then the row kernel (the only plan that copies).
Axes of length 1 never break a block: they can be moved freely.
"""
import math
import operator
from typing import NamedTuple, Optional, Tuple


def normalize_axes(axis, ndim, name="axis"):
    """Sorted tuple of non-negative axes; errors name `name` and the value."""
    if isinstance(axis, (list, tuple)):
        items = list(axis)
    else:
        items = [axis]
    axes = []
    for a in items:
        if isinstance(a, bool):
            raise TypeError(f"{name} must be an int or a sequence of ints, got {axis!r}")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of ints, got {axis!r}") from None
        if not -ndim <= a < ndim:
            raise ValueError(f"{name} {a} is out of bounds for an array of dimension {ndim}")
        axes.append(a % ndim)
    if not axes:
        raise ValueError(f"{name} must name at least one axis, got {axis!r}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name} contains duplicate axes: {axis!r}")
    return tuple(sorted(axes))


class LayoutPlan(NamedTuple):
    kind: str                      # "rows", "strided" or "transpose"
    outer: int
    reduce: int
    inner: int
    permutation: Optional[Tuple[int, ...]]   # transpose plan only: others + axes

    @property
    def layout(self):
        return (self.outer, self.reduce, self.inner)


def plan_layout(shape, axes):
    """How the kernels see an array of `shape` normalized over sorted `axes`."""
    reduce = math.prod(shape[a] for a in axes)
    kept = [a for a in range(len(shape)) if a not in axes and shape[a] != 1]
    first, last = axes[0], axes[-1]
    if not any(first < a < last for a in kept):
        outer = math.prod(shape[a] for a in kept if a < first)
        inner = math.prod(shape[a] for a in kept if a > last)
        return LayoutPlan("rows" if inner == 1 else "strided", outer, reduce, inner, None)
    others = tuple(a for a in range(len(shape)) if a not in axes)
    outer = math.prod(shape[a] for a in others)
    return LayoutPlan("transpose", outer, reduce, 1, others + tuple(axes))


def keepdims_shape(shape, axes):
    """Shape of the statistics: the normalized axes set to 1."""
    return tuple(1 if a in axes else n for a, n in enumerate(shape))


def param_shape(shape, axes):
    """Shape of weight and bias: the normalized axes' lengths, in order."""
    return tuple(shape[a] for a in axes)
