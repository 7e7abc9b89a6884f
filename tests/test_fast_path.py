"""The common-call path in C (_kernels.fast_forward / fast_backward).

It must take exactly the calls whose arguments are already what the kernel
reads, give the same bits as the general path, and hand everything else to
the general path (return None) without ever raising itself.
"""
import numpy as np
import pytest

import layernorm as ln
from layernorm import _kernels
from conftest import ALL_DTYPES, FLOAT32, FLOAT64, HALF_DTYPES, random_array, random_params, stats_dtype

LN, RMS = _kernels.LAYER_NORM, _kernels.RMS_NORM


def general_forward(mode, *args, **kwargs):
    """The Python path, with the fast path switched off."""
    from layernorm import functional
    return functional._forward(mode, *args, **kwargs)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape, axis", [((8, 16), -1), ((20, 5, 10, 10), (-3, -2, -1)),
                                         ((20, 5, 10, 10), (3, 1, 2)), ((7,), 0), ((300, 129), 1),
                                         # the strided layout: a block followed by other axes
                                         ((4, 32, 7, 7), 1), ((4, 6, 5, 33), (2, 1)), ((300, 129), 0),
                                         ((3, 1, 5, 2), (0, 1, 2)), ((2, 40, 4096), -2)])
@pytest.mark.parametrize("with_params", [False, True])
def test_taken_and_bitwise_equal_to_the_general_path(rng, dtype, shape, axis, with_params):
    x = random_array(rng, shape, dtype, offset=2.0)
    axes = (axis,) if isinstance(axis, int) else axis
    pshape = tuple(shape[a] for a in sorted(a % len(shape) for a in axes))
    weight, bias = random_params(rng, pshape, stats_dtype(dtype)) if with_params else (None, None)
    fast = _kernels.fast_forward(LN, x, axis, weight, bias, 1e-5, None, True)
    assert fast is not None, "the fast path declined a common call"
    slow = general_forward(LN, x, axis, weight, bias, 1e-5, None, True)
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    fast_rms = _kernels.fast_forward(RMS, x, axis, weight, None, 1e-6, None, True)
    slow_rms = general_forward(RMS, x, axis, weight, None, 1e-6, None, True)
    for a, b in zip(fast_rms, slow_rms):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_rms_default_eps_taken(rng, dtype):
    """eps=None (rms_norm's default) is float32's machine epsilon, float64's
    for float64 x, on the fast path as on the general one."""
    x = random_array(rng, (20, 5, 10, 10), dtype, offset=0.5)
    weight = random_params(rng, (10, 10), stats_dtype(dtype))[0]
    expected_eps = float(np.finfo(np.float64 if dtype == FLOAT64 else np.float32).eps)
    fast = _kernels.fast_forward(RMS, x, (2, 3), weight, None, None, None, True)
    assert fast is not None, "the fast path declined rms_norm's default eps"
    for other in (general_forward(RMS, x, (2, 3), weight, None, None, None, True),
                  general_forward(RMS, x, (2, 3), weight, None, expected_eps, None, True)):
        for a, b in zip(fast, other):
            assert a.tobytes() == b.tobytes()
    y, s = _kernels.fast_forward(RMS, x, -1, None, None, None, None, False, residual=x)
    y_general, s_general = general_forward(RMS, x, -1, None, None, None, None, False, residual=x)
    assert y.tobytes() == y_general.tobytes() and s.tobytes() == s_general.tobytes()
    # layer norm has no default: eps=None is the general path's error to raise
    assert _kernels.fast_forward(LN, x, -1, None, None, None, None, False) is None


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_weights_copied_to_float32_on_the_fast_path(rng, dtype):
    """Half-precision weight and bias that the kernels read as float32 copies
    (each entry serves many rows of a large call) are copied here: the bits of
    float32 weights, and the caller's weights unchanged."""
    x = random_array(rng, (256, 768), dtype)
    weight, bias = random_params(rng, (768,), dtype)
    assert not _kernels.native_half_params_pay(x.size, weight.size)
    kept = weight.copy(), bias.copy()
    fast = _kernels.fast_forward(LN, x, -1, weight, bias, 1e-5, None, True)
    assert fast is not None, "the fast path declined half-precision weights"
    wide = _kernels.fast_forward(LN, x, -1, weight.astype(np.float32), bias.astype(np.float32), 1e-5, None, True)
    slow = general_forward(LN, x, -1, weight, bias, 1e-5, None, True)
    for a, b, c in zip(fast, wide, slow):
        assert a.dtype == c.dtype and a.tobytes() == b.tobytes() == c.tobytes()
    y, s = _kernels.fast_forward(RMS, x, -1, weight, None, None, None, False, residual=x)
    y_wide = ln.rms_norm(s, -1, weight.astype(np.float32))
    assert y.tobytes() == y_wide.tobytes()
    assert weight.tobytes() == kept[0].tobytes() and bias.tobytes() == kept[1].tobytes()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("weight_kind", ["none", "statistics dtype", "x's dtype"])
@pytest.mark.parametrize("shape, axes", [((20, 5, 10, 10), (1, 2, 3)), ((256, 3, 256), (1, 2)),
                                         ((20, 5, 10, 10), (1,)), ((256, 3, 256), (1,))])
@pytest.mark.parametrize("mode", [LN, RMS])
def test_backward_taken_and_equal_to_the_general_path(rng, dtype, weight_kind, shape, axes, mode):
    """Rows and the strided layout; half precision too, with a float32 weight
    or one in x's dtype (read natively in the small calls, as a float32 copy
    in the large ones, whose weight entries serve 256 or more rows each)."""
    from layernorm import functional
    x = random_array(rng, shape, dtype, offset=2.0)
    dy = random_array(rng, x.shape, dtype)
    weight = None
    if weight_kind != "none":
        wdtype = dtype if weight_kind == "x's dtype" else stats_dtype(dtype)
        weight = random_params(rng, tuple(shape[a] for a in axes), wdtype)[0]
    kept = None if weight is None else weight.copy()
    if mode == LN:
        _, mean, rstd = ln.layer_norm(x, axes, weight, return_stats=True)
    else:
        mean, (_, rstd) = None, ln.rms_norm(x, axes, weight, return_stats=True)
    fast = _kernels.fast_backward(mode, dy, x, mean, rstd, axes, weight)
    assert fast is not None, "the fast path declined"
    slow = functional._backward(mode, dy, x, mean, rstd, axes, weight)
    assert len(fast) == len(slow) == (3 if mode == LN else 2)
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if weight is not None:
        assert fast[1].dtype == weight.dtype and weight.tobytes() == kept.tobytes()
        assert np.array_equal(weight, kept)


X = np.arange(12, dtype=np.float32).reshape(3, 4)
W = np.ones(4, np.float32)

# Calls the fast path must decline (return None), never raise on.
DECLINED = {
    "axis too large": dict(axis=2 ** 70),
    "axis beyond ndim": dict(axis=5),
    "axis bool": dict(axis=True),
    "axis numpy int": dict(axis=np.int64(-1)),
    "axis list with a float": dict(axis=[1.0]),
    "axis repeated": dict(axis=(1, 1)),
    "axis tuple with huge item": dict(axis=(2 ** 70,)),
    "axis tuple with float": dict(axis=(1.0,)),
    "axis empty tuple": dict(axis=()),
    "axes not one block": dict(x=np.ones((2, 3, 4), np.float32), axis=(0, 2), weight=None),
    "axes not one block, negative": dict(x=np.ones((2, 3, 4), np.float32), axis=(-1, -3), weight=None),
    "eps negative": dict(eps=-1.0),
    "eps nan": dict(eps=float("nan")),
    "eps inf": dict(eps=float("inf")),
    "eps bool": dict(eps=True),
    "eps numpy nan": dict(eps=np.float32("nan")),
    "eps string": dict(eps="1e-5"),
    "eps None (layer norm)": dict(eps=None),
    "weight wrong shape": dict(weight=np.ones(3, np.float32)),
    "weight integer": dict(weight=np.ones(4, np.int64)),
    "weight complex": dict(weight=np.ones(4, np.complex64)),
    "weight float64 of the wrong shape": dict(weight=np.ones(3, np.float64)),
    "weight a list": dict(weight=[1.0] * 4),
    "out wrong dtype": dict(out=np.empty((3, 4), np.float64)),
    "out overlaps weight": dict(out="overlaps weight"),
    "out read-only": dict(out="read-only"),
    "out Fortran order": dict(out=np.empty((3, 4), np.float32, order="F")),
    "x a list": dict(x=X.tolist()),
    "x int": dict(x=np.arange(12).reshape(3, 4)),
    "x Fortran order": dict(x=np.asfortranarray(X)),
    "x byte-swapped": dict(x=X.astype(">f4")),
    "x 0-d": dict(x=np.float32(1.0)),
    "x empty": dict(x=np.empty((0, 4), np.float32)),
    "x subclass": dict(x=np.ma.masked_array(X)),
}


@pytest.mark.parametrize("case", DECLINED, ids=list(DECLINED))
def test_declines_without_raising(case):
    args = dict(x=X.copy(), axis=-1, weight=W, bias=None, eps=1e-5, out=None)
    args.update(DECLINED[case])
    if isinstance(args["out"], str):
        if args["out"] == "read-only":
            args["out"] = np.empty((3, 4), np.float32)
            args["out"].flags.writeable = False
        else:   # out's bytes include weight's
            shared = np.ones(12, np.float32)
            args["weight"], args["out"] = shared[:4], shared.reshape(3, 4)
    before = np.array(args["x"], copy=True) if not isinstance(args["x"], list) else None
    result = _kernels.fast_forward(LN, args["x"], args["axis"], args["weight"], args["bias"],
                                   args["eps"], args["out"], False)
    assert result is None
    if before is not None:
        np.testing.assert_array_equal(args["x"], before)


def test_declines_backward_without_raising():
    _, mean, rstd = ln.layer_norm(X, return_stats=True)
    for dy, m, r, axis, w in [(X, mean, rstd, 2 ** 70, None), (X, None, rstd, -1, None),
                              (X, mean, None, -1, None), (X, mean[:2], rstd, -1, None),
                              (X, mean, rstd, -1, np.ones(4, np.int32)), (X.astype(np.float64), mean, rstd, -1, None),
                              (X.astype(np.float16), mean, rstd, -1, None), (X.T, mean, rstd, -1, None),
                              (X, mean.astype(np.float64), rstd, -1, None), (X, mean, rstd, -1, np.ones(3))]:
        assert _kernels.fast_backward(LN, dy, X, m, r, axis, w) is None


def test_in_place_and_fused_add_forms(rng):
    x = random_array(rng, (6, 32), FLOAT32)
    r = random_array(rng, (6, 32), FLOAT32)
    expected = ln.layer_norm(x + r)
    residual = r.copy()
    y, s = _kernels.fast_forward(LN, x, -1, None, None, 1e-5, None, False, residual, residual)
    assert s is residual
    np.testing.assert_array_equal(s, x + r)
    np.testing.assert_allclose(y, expected, atol=1e-6)
    inplace = x.copy()
    assert _kernels.fast_forward(LN, inplace, -1, None, None, 1e-5, inplace, False) is inplace
    np.testing.assert_array_equal(inplace, ln.layer_norm(x))
    # out is x, but x is read-only: declined (the general path raises)
    x.flags.writeable = False
    assert _kernels.fast_forward(LN, x, -1, None, None, 1e-5, x, False) is None


def test_fused_add_with_given_outputs(rng):
    x = random_array(rng, (6, 32), FLOAT32)
    r = random_array(rng, (6, 32), FLOAT32)
    w, b = random_params(rng, (32,), FLOAT32)
    y, s = np.empty_like(x), np.empty_like(x)
    result = _kernels.fast_forward(LN, x, -1, w, b, 1e-5, y, False, r, s)
    assert result is not None and result[0] is y and result[1] is s
    expected = general_forward(LN, x, -1, w, b, 1e-5, None, False, r, None)
    assert y.tobytes() == expected[0].tobytes() and s.tobytes() == expected[1].tobytes()
    # outputs that alias an input or each other go to the general path
    for out, sum_out in [(r, None), (None, x), (y, y), (x, None)]:
        assert _kernels.fast_forward(LN, x, -1, w, b, 1e-5, out, False, r, sum_out) is None


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_other_float_params_eps_types_and_axis_lists_taken(rng, dtype):
    """float64 weights with float32 x (numpy.ones' default dtype), numpy or
    int eps and an axis list are what the general path converts exactly; the
    fast path takes them with the same bits, and the backward returns the
    parameter gradients in the weight's dtype."""
    from layernorm import functional
    x = random_array(rng, (6, 5, 32), dtype, offset=1.0)
    for wdtype in (np.float64, np.float32, np.float16, ">f4", "strided"):
        weight, bias = random_params(rng, (64,) if wdtype == "strided" else (32,), FLOAT64)
        weight, bias = (p[::2] if wdtype == "strided" else p.astype(wdtype) for p in (weight, bias))
        kept = weight.copy()
        for axis, eps in [(-1, 1e-5), ([2], np.float32(1e-5)), ((-1,), np.float64(1e-5)), (-1, 0)]:
            fast = _kernels.fast_forward(LN, x, axis, weight, bias, eps, None, True)
            assert fast is not None, f"declined weight {np.dtype(wdtype)}, axis {axis!r}, eps {eps!r}"
            slow = general_forward(LN, x, axis, weight, bias, eps, None, True)
            for a, b in zip(fast, slow):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        _, mean, rstd = fast
        dy = random_array(rng, x.shape, dtype)
        fast = _kernels.fast_backward(LN, dy, x, mean, rstd, [2], weight)
        assert fast is not None
        slow = functional._backward(LN, dy, x, mean, rstd, -1, weight)
        for a, b in zip(fast, slow):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        assert fast[1].dtype == weight.dtype and weight.tobytes() == kept.tobytes()
        assert np.array_equal(weight, kept)
