"""Benchmark cases: array shapes, the axes they are normalized over, and their data.

A :class:`Case` is pure geometry.  :class:`CaseData` lazily creates (and caches)
the arrays a section needs for one case, so a 64 MB input is generated once and
shared by every implementation and thread count, then dropped with the case.
"""
from dataclasses import dataclass
from functools import cached_property
import zlib

import numpy as np

EPS = 1e-5       # layer_norm epsilon used by every implementation
RMS_EPS = 1e-6   # rms_norm epsilon, passed explicitly so all implementations agree


@dataclass(frozen=True)
class Case:
    shape: tuple
    axes: tuple          # canonical: non-negative, sorted, unique
    label: str = ""

    @property
    def name(self):
        if self.label:
            return self.label
        shape = "(" + ", ".join(str(s) for s in self.shape) + ")"
        if self.trailing and len(self.axes) == 1:
            return shape
        if self.trailing:
            return f"{shape} last {len(self.axes)}"
        return f"{shape} axis {','.join(map(str, self.axes))}"

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def norm_shape(self):
        """Shape of weight/bias: the normalized axes' extents, in axis order."""
        return tuple(self.shape[a] for a in self.axes)

    @property
    def trailing(self):
        k = len(self.axes)
        return self.axes == tuple(range(self.ndim - k, self.ndim))

    @property
    def cols(self):
        return int(np.prod(self.norm_shape, dtype=np.int64))

    @property
    def rows(self):
        return self.size // self.cols if self.cols else 0

    @property
    def axis_arg(self):
        """The ``axis`` argument passed to layernorm: an int for one axis."""
        if len(self.axes) == 1:
            return -1 if self.trailing else self.axes[0]
        return self.axes

    @property
    def perm(self):
        """Permutation moving the normalized axes last (for libraries that need it)."""
        return tuple(a for a in range(self.ndim) if a not in self.axes) + self.axes

    @property
    def inverse_perm(self):
        return tuple(int(i) for i in np.argsort(self.perm))

    def param_broadcast_shape(self):
        """Shape that broadcasts a weight of ``norm_shape`` against x."""
        return tuple(s if i in self.axes else 1 for i, s in enumerate(self.shape))


def case(shape, axes=(-1,), label=""):
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    canon = tuple(sorted(a % nd for a in axes))
    return Case(shape, canon, label)


# The forward cases of issue 2 (float32); backward, RMS, add and half reuse them.
FORWARD_CASES = [
    case((4096, 768)),
    case((16384, 1024)),
    case((262144, 64)),
    case((64, 262144)),
    case((1, 16777216)),
    case((20, 5, 10, 10), axes=(-3, -2, -1)),
    case((32, 64, 56, 56), axes=(1,)),
    case((8, 16)),
]

# Small-call latency cases (reported in microseconds).
SMALL_CASES = [
    case((8, 16)),
    case((20, 5, 10, 10), axes=(-3, -2, -1)),
]

# Layer-object overhead: a built LayerNorm(16) on an (8, 16) batch.
LAYERS_CASES = [case((8, 16))]


def select_cases(cases, patterns):
    """Keep cases matching any of ``patterns`` (all when empty).

    A pattern matches when it is a substring of the case's name or of its
    short form, spaces ignored: '16384x1024', '32x64x56x56', 'axis', 'last3'.
    """
    if not patterns:
        return list(cases)
    norm = lambda s: s.replace(" ", "").lower()
    pats = [norm(p) for p in patterns]

    def forms(c):
        return norm(c.name), "x".join(map(str, c.shape)) + norm(c.name).split(")", 1)[1]
    return [c for c in cases if any(p in f for p in pats for f in forms(c))]


def half_dtypes():
    """{name: numpy dtype} of the reduced-precision types available here."""
    out = {"float16": np.dtype(np.float16)}
    try:
        import ml_dtypes
        out["bfloat16"] = np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return out


def dtype_of(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class CaseData:
    """Arrays for one case, generated on first use with a per-case seed.

    float32 arrays are the source of truth; other dtypes are rounded copies of
    them (so every dtype normalizes the same numbers).  Weight is 1 + noise and
    bias is noise, shaped like ``case.norm_shape``.
    """

    def __init__(self, case, seed=0):
        self.case = case
        self._seed = seed ^ zlib.crc32(case.name.encode())
        self._cast = {}

    def _rng(self, stream):
        return np.random.default_rng([self._seed, stream])

    @cached_property
    def x(self):
        return self._rng(1).standard_normal(self.case.shape, dtype=np.float32)

    @cached_property
    def r(self):
        """The residual of the fused-add rows."""
        return self._rng(2).standard_normal(self.case.shape, dtype=np.float32)

    @cached_property
    def dy(self):
        return self._rng(3).standard_normal(self.case.shape, dtype=np.float32)

    @cached_property
    def w(self):
        return (1 + 0.1 * self._rng(4).standard_normal(self.case.norm_shape)).astype(np.float32)

    @cached_property
    def b(self):
        return (0.1 * self._rng(5).standard_normal(self.case.norm_shape)).astype(np.float32)

    @cached_property
    def stats(self):
        """(mean, rstd) as layer_norm(return_stats=True) returns them: float32, keepdims."""
        x64 = self.x.astype(np.float64)
        mean = x64.mean(axis=self.case.axes, keepdims=True)
        var = np.square(x64 - mean).mean(axis=self.case.axes, keepdims=True)
        return mean.astype(np.float32), (1.0 / np.sqrt(var + EPS)).astype(np.float32)

    def get(self, name, dtype="float32"):
        """Array ``name`` (x, r, dy, w, b) in ``dtype`` (cached)."""
        base = getattr(self, name)
        dt = dtype_of(dtype)
        if dt == base.dtype:
            return base
        key = (name, dt.str, dt.name)
        if key not in self._cast:
            self._cast[key] = base.astype(dt)
        return self._cast[key]
