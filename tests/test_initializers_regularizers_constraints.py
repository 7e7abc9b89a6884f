"""layernorm.initializers / regularizers / constraints: Keras' identifiers, formulas and configs."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import layernorm
from layernorm import constraints, initializers, regularizers

I = initializers


def numerical_grad(f, a, h=1e-6):
    a = np.array(a, dtype=np.float64)
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f(a)
        a[i] = old - h
        fm = f(a)
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def test_submodules_are_package_attributes():
    assert layernorm.initializers is initializers
    assert layernorm.regularizers is regularizers
    assert layernorm.constraints is constraints


# --------------------------------------------------------------------------
# initializers
# --------------------------------------------------------------------------

IDENTIFIERS = {
    "zeros": I.Zeros, "Zeros": I.Zeros, "zero": I.Zeros,
    "ones": I.Ones, "Ones": I.Ones, "one": I.Ones,
    "constant": I.Constant, "Constant": I.Constant,
    "random_normal": I.RandomNormal, "RandomNormal": I.RandomNormal, "normal": I.RandomNormal,
    "random_uniform": I.RandomUniform, "RandomUniform": I.RandomUniform, "uniform": I.RandomUniform,
    "truncated_normal": I.TruncatedNormal, "TruncatedNormal": I.TruncatedNormal,
    "glorot_uniform": I.GlorotUniform, "GlorotUniform": I.GlorotUniform,
    "glorot_normal": I.GlorotNormal, "GlorotNormal": I.GlorotNormal,
    "he_normal": I.HeNormal, "HeNormal": I.HeNormal,
    "he_uniform": I.HeUniform, "HeUniform": I.HeUniform,
    "lecun_normal": I.LecunNormal, "LecunNormal": I.LecunNormal,
    "lecun_uniform": I.LecunUniform, "LecunUniform": I.LecunUniform,
    "variance_scaling": I.VarianceScaling, "VarianceScaling": I.VarianceScaling,
    "orthogonal": I.Orthogonal, "Orthogonal": I.Orthogonal, "OrthogonalInitializer": I.Orthogonal,
    "identity": I.Identity, "Identity": I.Identity, "IdentityInitializer": I.Identity,
}


@pytest.mark.parametrize("name,cls", IDENTIFIERS.items())
def test_get_string_identifiers(name, cls):
    init = I.get(name)
    assert type(init) is cls
    values = init((4, 4), dtype="float32")
    assert values.shape == (4, 4) and values.dtype == np.float32


def test_get_other_identifiers():
    assert I.get(None) is None
    inst = I.Constant(2.0)
    assert I.get(inst) is inst
    assert isinstance(I.get(I.HeNormal), I.HeNormal)  # a class is instantiated
    fn = lambda shape, dtype=None: np.zeros(shape)  # noqa: E731
    assert I.get(fn) is fn
    rebuilt = I.get({"class_name": "RandomNormal", "config": {"mean": 1.0, "stddev": 2.0, "seed": 5}})
    assert isinstance(rebuilt, I.RandomNormal) and rebuilt.stddev == 2.0 and rebuilt.seed == 5
    keras_style = {"module": "keras.initializers", "class_name": "Ones", "config": {}, "registered_name": None}
    assert isinstance(I.get(keras_style), I.Ones)
    for bad in ["not_an_initializer", 3, {"class_name": "Nope", "config": {}}]:
        with pytest.raises(ValueError, match="Could not interpret initializer identifier: "):
            I.get(bad)
    with pytest.raises(ValueError, match="Could not interpret initializer identifier: nope"):
        I.get("nope")


def test_constant_values():
    np.testing.assert_array_equal(I.Zeros()((2, 3)), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(I.Ones()((3,), dtype="float64"), np.ones(3))
    assert I.Ones()((3,), dtype="float64").dtype == np.float64
    np.testing.assert_array_equal(I.Constant(3.5)((2,)), [3.5, 3.5])
    assert I.Constant()((1,))[0] == 0.0
    np.testing.assert_array_equal(I.Constant([1.0, 2.0])((2, 2)), [[1, 2], [1, 2]])
    np.testing.assert_array_equal(I.Identity(gain=2.0)((2, 3)), [[2, 0, 0], [0, 2, 0]])
    with pytest.raises(ValueError, match="Identity matrix initializer can only be used for 2D matrices"):
        I.Identity()((3,))


def test_random_distributions():
    n = (200, 500)
    v = I.RandomNormal(mean=1.0, stddev=0.5, seed=1)(n)
    assert abs(v.mean() - 1.0) < 0.01 and abs(v.std() - 0.5) < 0.01
    v = I.RandomUniform(minval=-2.0, maxval=3.0, seed=1)(n)
    assert v.min() >= -2.0 and v.max() < 3.0 and abs(v.mean() - 0.5) < 0.02
    v = I.TruncatedNormal(mean=0.0, stddev=2.0, seed=1)(n)
    assert np.abs(v).max() <= 4.0 and v.std() > 1.6
    assert np.abs(I.RandomNormal(stddev=1.0, seed=1)(n)).max() > 4.0


@pytest.mark.parametrize("cls,scale,mode,dist", [
    (I.GlorotUniform, 1.0, "fan_avg", "uniform"), (I.GlorotNormal, 1.0, "fan_avg", "truncated_normal"),
    (I.HeUniform, 2.0, "fan_in", "uniform"), (I.HeNormal, 2.0, "fan_in", "truncated_normal"),
    (I.LecunUniform, 1.0, "fan_in", "uniform"), (I.LecunNormal, 1.0, "fan_in", "truncated_normal"),
])
def test_variance_scaling_family(cls, scale, mode, dist):
    init = cls(seed=3)
    assert (init.scale, init.mode, init.distribution) == (scale, mode, dist)
    assert init.get_config() == {"seed": 3}
    shape = (300, 200)
    n = {"fan_in": 300, "fan_avg": 250}[mode]
    v = init(shape)
    if dist == "uniform":
        limit = math.sqrt(3 * scale / n)
        assert np.abs(v).max() <= limit and np.abs(v).max() > 0.99 * limit
    # the target variance scale / n holds for both distributions (truncation is compensated)
    assert abs(v.var() / (scale / n) - 1) < 0.03
    np.testing.assert_array_equal(v, cls(seed=3)(shape))


def test_variance_scaling_arguments():
    v = I.VarianceScaling(scale=0.5, mode="fan_out", distribution="untruncated_normal", seed=0)((100, 400))
    assert abs(v.var() / (0.5 / 400) - 1) < 0.03
    assert I.VarianceScaling(distribution="normal").distribution == "truncated_normal"
    with pytest.raises(ValueError, match="Argument `scale` must be positive float"):
        I.VarianceScaling(scale=0.0)
    with pytest.raises(ValueError, match="Invalid `mode` argument"):
        I.VarianceScaling(mode="fan")
    with pytest.raises(ValueError, match="Invalid `distribution` argument"):
        I.VarianceScaling(distribution="cauchy")
    from layernorm.initializers import compute_fans
    assert compute_fans(()) == (1, 1) and compute_fans((7,)) == (7, 7)
    assert compute_fans((3, 4)) == (3, 4) and compute_fans((3, 4, 5, 6)) == (60, 72)


def test_orthogonal():
    q = I.Orthogonal(gain=2.0, seed=4)((3, 5))
    np.testing.assert_allclose(q @ q.T, 4 * np.eye(3), atol=1e-5)
    q = I.Orthogonal(seed=4)((2, 3, 4))
    flat = q.reshape(6, 4).astype(np.float64)
    np.testing.assert_allclose(flat.T @ flat, np.eye(4), atol=1e-5)
    with pytest.raises(ValueError, match="at least two-dimensional"):
        I.Orthogonal()((3,))


def test_seeds():
    # integer seed, or None (one seed drawn at construction): same values on every call
    for init in (I.RandomNormal(seed=11), I.RandomNormal()):
        np.testing.assert_array_equal(init((5,)), init((5,)))
    assert not np.array_equal(I.RandomNormal()((5,)), I.RandomNormal()((5,)))
    # a Generator gives fresh values on each call
    init = I.RandomUniform(seed=np.random.default_rng(0))
    assert not np.array_equal(init((5,)), init((5,)))
    assert init.get_config()["seed"] is None
    with pytest.raises(ValueError, match="`seed` argument should be"):
        I.RandomNormal(seed="abc")


@pytest.mark.parametrize("init", [
    I.Zeros(), I.Ones(), I.Constant(0.7), I.Identity(gain=3.0),
    I.RandomNormal(0.1, 0.2, seed=1), I.RandomUniform(-1, 2, seed=2), I.TruncatedNormal(0.0, 1.5, seed=3),
    I.VarianceScaling(2.0, "fan_out", "uniform", seed=4), I.GlorotUniform(seed=5), I.HeNormal(seed=6),
    I.LecunUniform(seed=7), I.Orthogonal(gain=0.5, seed=8),
])
def test_initializer_config_round_trip(init):
    config = I.serialize(init)
    assert config["class_name"] == type(init).__name__
    clone = I.deserialize(config)
    assert type(clone) is type(init) and clone.get_config() == init.get_config()
    np.testing.assert_array_equal(clone((3, 3)), init((3, 3)))
    assert type(init.clone()) is type(init)
    assert type(init).__name__ in repr(init)


def test_bfloat16_dtype():
    pytest.importorskip("ml_dtypes")
    assert I.Ones()((2,), dtype="bfloat16").dtype.name == "bfloat16"


# --------------------------------------------------------------------------
# regularizers
# --------------------------------------------------------------------------

def test_regularizer_formulas_from_keras_docs():
    assert regularizers.L2(2.0)(np.ones((5, 5))) == pytest.approx(50.0)
    assert regularizers.L1(0.01)(np.ones((5, 5)) * 2.0) == pytest.approx(0.5)
    w = np.array([[1.0, -2.0], [3.0, -4.0]])
    assert regularizers.L1L2(l1=0.1, l2=0.2)(w) == pytest.approx(0.1 * 10 + 0.2 * 30)
    assert regularizers.L1L2()(w) == 0.0
    assert regularizers.L1().l1 == 0.01 and regularizers.L2().l2 == 0.01
    assert regularizers.L1(None).l1 == 0.01 and regularizers.L1L2(None, None).get_config() == {"l1": 0.0, "l2": 0.0}
    # rows [1, 0] and [1, 1]/sqrt(2): one pair with |cos| = 1/sqrt(2)
    reg = regularizers.OrthogonalRegularizer(factor=0.01)
    assert reg(np.array([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx(0.01 * 0.5 * 2 / math.sqrt(2))
    assert reg(np.eye(3)) == 0.0
    cols = regularizers.OrthogonalRegularizer(factor=1.0, mode="columns")
    assert cols(np.array([[1.0, 1.0], [0.0, 1.0]])) == pytest.approx(0.5 * 2 / math.sqrt(2))
    assert isinstance(reg(np.eye(2)), float)


def test_regularizer_identifiers():
    for name, cls in [("l1", regularizers.L1), ("L1", regularizers.L1), ("l2", regularizers.L2),
                      ("L2", regularizers.L2), ("l1l2", regularizers.L1L2), ("L1L2", regularizers.L1L2),
                      ("orthogonal_regularizer", regularizers.OrthogonalRegularizer),
                      ("OrthogonalRegularizer", regularizers.OrthogonalRegularizer)]:
        assert type(regularizers.get(name)) is cls
    assert regularizers.get("l1l2").get_config() == {"l1": 0.0, "l2": 0.0}  # Keras 3's defaults
    assert regularizers.get(None) is None
    fn = lambda w: 0.0  # noqa: E731
    assert regularizers.get(fn) is fn
    assert isinstance(regularizers.get({"class_name": "L2", "config": {"l2": 0.5}}), regularizers.L2)
    with pytest.raises(ValueError, match="Could not interpret regularizer identifier: l3"):
        regularizers.get("l3")


@pytest.mark.parametrize("make", [
    lambda v: regularizers.L1(v), lambda v: regularizers.L2(v), lambda v: regularizers.L1L2(l1=v),
    lambda v: regularizers.L1L2(l2=v), lambda v: regularizers.OrthogonalRegularizer(v),
])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.1", [0.1], True])
def test_invalid_factors(make, value):
    with pytest.raises(ValueError, match="Invalid value for argument"):
        make(value)


def test_orthogonal_regularizer_errors():
    with pytest.raises(ValueError, match="Invalid value for argument `mode`"):
        regularizers.OrthogonalRegularizer(mode="diagonal")
    with pytest.raises(ValueError, match="must have rank 2"):
        regularizers.OrthogonalRegularizer()(np.ones(3))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(2, 4), st.integers(2, 4)),
                  elements=st.floats(-3, 3).filter(lambda v: abs(v) > 0.05)))
def test_regularizer_gradients_match_finite_differences(w):
    for reg in (regularizers.L1(0.3), regularizers.L2(0.7), regularizers.L1L2(0.2, 0.4)):
        np.testing.assert_allclose(reg.gradient(w), numerical_grad(reg, w), atol=1e-5)


def test_orthogonal_regularizer_gradient():
    rng = np.random.default_rng(0)
    for mode in ("rows", "columns"):
        reg = regularizers.OrthogonalRegularizer(0.5, mode=mode)
        w = rng.normal(size=(3, 4))
        np.testing.assert_allclose(reg.gradient(w), numerical_grad(reg, w), atol=1e-6)


def test_penalty_gradient_fallback_for_callables():
    w = np.array([1.0, -2.0, 0.5])
    g = regularizers.penalty_gradient(lambda a: float(np.sum(a ** 3)), w)
    np.testing.assert_allclose(g, 3 * w ** 2, rtol=1e-6)
    np.testing.assert_allclose(regularizers.penalty_gradient(regularizers.L2(0.5), w), w)


@pytest.mark.parametrize("reg", [regularizers.L1(0.2), regularizers.L2(0.3), regularizers.L1L2(0.1, 0.4),
                                 regularizers.OrthogonalRegularizer(0.05, "columns")])
def test_regularizer_config_round_trip(reg):
    clone = regularizers.deserialize(regularizers.serialize(reg))
    assert type(clone) is type(reg) and clone.get_config() == reg.get_config()
    assert type(reg).__name__ in repr(reg)


# --------------------------------------------------------------------------
# constraints
# --------------------------------------------------------------------------

def test_constraint_formulas():
    w = np.array([3.0, 4.0], dtype=np.float32)
    np.testing.assert_allclose(constraints.MaxNorm(2)(w), [1.2, 1.6], rtol=1e-6)
    np.testing.assert_allclose(constraints.MaxNorm(10)(w), w, rtol=1e-6)
    np.testing.assert_allclose(constraints.UnitNorm()(w), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(constraints.MinMaxNorm(1.0, 2.0, rate=0.5)(w), [2.1, 2.8], rtol=1e-6)
    np.testing.assert_allclose(constraints.MinMaxNorm(6.0, 8.0)(w), [3.6, 4.8], rtol=1e-6)
    np.testing.assert_array_equal(constraints.NonNeg()(np.array([-1.0, 0.0, 2.0])), [0.0, 0.0, 2.0])
    assert constraints.MaxNorm(2)(w).dtype == np.float32
    np.testing.assert_array_equal(constraints.Constraint()(w), w)
    # exact Keras formula, epsilon 1e-7 included
    assert constraints.UnitNorm()(np.array([3.0, 4.0]))[0] == 3.0 / (1e-7 + 5.0)
    # axis: norms per column (axis=0) or per row (axis=1)
    m = np.array([[3.0, 0.0], [4.0, 2.0]])
    np.testing.assert_allclose(constraints.UnitNorm(axis=0)(m), [[0.6, 0.0], [0.8, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(constraints.UnitNorm(axis=1)(m), [[1.0, 0.0], [4 / 20 ** 0.5, 2 / 20 ** 0.5]],
                               rtol=1e-6)
    np.testing.assert_array_equal(constraints.MaxNorm()(np.zeros(3)), np.zeros(3))


def test_constraint_identifiers_and_configs():
    for name, cls in [("non_neg", constraints.NonNeg), ("NonNeg", constraints.NonNeg),
                      ("max_norm", constraints.MaxNorm), ("MaxNorm", constraints.MaxNorm),
                      ("min_max_norm", constraints.MinMaxNorm), ("MinMaxNorm", constraints.MinMaxNorm),
                      ("unit_norm", constraints.UnitNorm), ("UnitNorm", constraints.UnitNorm)]:
        assert type(constraints.get(name)) is cls
    assert constraints.get(None) is None
    assert constraints.get("max_norm").get_config() == {"max_value": 2, "axis": 0}
    assert constraints.get("min_max_norm").get_config() == {"min_value": 0.0, "max_value": 1.0,
                                                            "rate": 1.0, "axis": 0}
    for c in (constraints.NonNeg(), constraints.MaxNorm(3, axis=1), constraints.UnitNorm(axis=1),
              constraints.MinMaxNorm(0.5, 1.5, 0.3, 1)):
        clone = constraints.deserialize(constraints.serialize(c))
        assert type(clone) is type(c) and clone.get_config() == c.get_config()
    with pytest.raises(ValueError, match="Could not interpret constraint identifier: positive"):
        constraints.get("positive")
