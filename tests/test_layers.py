"""Keras-style layers: LayerNormalization, RMSNormalization, Sequential, layer_normalization.

Keras is not a test dependency: expected values come from Keras' own formulas
written out in NumPy (float64) below, or are hard-coded from Keras' docs.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import layernorm as ln
from layernorm import constraints, initializers, regularizers
from layernorm.layers import LayerNormalization, RMSNormalization, Sequential, layer_normalization
from conftest import numeric_gradient as numerical_grad


def keras_layer_norm(x, axis, gamma=None, beta=None, epsilon=1e-3):
    """keras.layers.LayerNormalization.call, in float64."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(sorted(a % x.ndim for a in ([axis] if np.ndim(axis) == 0 else axis)))
    bshape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    mean = x.mean(axis=axes, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * np.reshape(gamma, bshape)
    res = -mean * inv
    if beta is not None:
        res = res + np.reshape(beta, bshape)
    return x * inv + res


def keras_rms_norm(x, axis, scale, epsilon=1e-6):
    """keras.ops.rms_normalization, in float64."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(sorted(a % x.ndim for a in ([axis] if np.ndim(axis) == 0 else axis)))
    bshape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    rrms = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + epsilon)
    return x * rrms * np.reshape(scale, bshape)




# --------------------------------------------------------------------------
# LayerNormalization: values
# --------------------------------------------------------------------------

def test_issue_example_values():
    layer = LayerNormalization(gamma_initializer="ones", beta_initializer="ones")
    y = layer(np.array([[0, 1, 2, 3, 4]], dtype=np.float32))
    np.testing.assert_allclose(y, [[-0.41386, 0.29307, 1.0, 1.70693, 2.41386]], atol=1e-5)


def test_defaults_match_keras():
    layer = LayerNormalization()
    assert layer.axis == -1 and layer.epsilon == 1e-3
    assert layer.center and layer.scale and layer.trainable
    assert isinstance(layer.gamma_initializer, initializers.Ones)
    assert isinstance(layer.beta_initializer, initializers.Zeros)
    assert layer.gamma_regularizer is None and layer.beta_constraint is None
    assert not layer.built and layer.weights == []
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    y = layer(x)
    assert layer.built and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, keras_layer_norm(x, -1), atol=1e-5)
    np.testing.assert_array_equal(layer.gamma, np.ones(6, np.float32))
    np.testing.assert_array_equal(layer.beta, np.zeros(6, np.float32))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    data=st.data(),
)
def test_matches_keras_formula_for_any_axis_set(shape, data):
    ndim = len(shape)
    axes = data.draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    axes = [a - ndim if data.draw(st.booleans()) else a for a in axes]  # mix negative axes
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
    layer = LayerNormalization(axis=axes)
    layer.build(x.shape)
    pshape = tuple(shape[a % ndim] for a in sorted(a % ndim for a in axes))
    gamma = rng.normal(size=pshape).astype(np.float32)
    beta = rng.normal(size=pshape).astype(np.float32)
    layer.set_weights([gamma, beta])
    np.testing.assert_allclose(layer(x), keras_layer_norm(x, axes, gamma, beta), atol=1e-5)
    assert layer.axis == sorted(a % ndim for a in axes)


def test_center_and_scale_off():
    x = np.random.default_rng(1).normal(size=(3, 5))
    for center, scale in itertools.product([True, False], repeat=2):
        layer = LayerNormalization(center=center, scale=scale, gamma_initializer="constant",
                                   beta_initializer=initializers.Constant(2.0))
        y = layer(x)
        assert (layer.gamma is not None) == scale and (layer.beta is not None) == center
        assert len(layer.weights) == center + scale
        expected = keras_layer_norm(x, -1, np.zeros(5) if scale else None,
                                    np.full(5, 2.0) if center else None)
        np.testing.assert_allclose(y, expected, atol=1e-6)
        layer.backward(np.ones_like(x))
        assert set(layer.gradients) == {n for n, on in (("gamma", scale), ("beta", center)) if on}


def test_multi_axis_weights_shape_like_keras_docstring():
    layer = LayerNormalization(axis=[1, 2, 3])
    layer.build([5, 20, 30, 40])
    assert layer.beta.shape == (20, 30, 40) and layer.gamma.shape == (20, 30, 40)


# --------------------------------------------------------------------------
# axis validation and building
# --------------------------------------------------------------------------

@pytest.mark.parametrize("axis", ["1", 1.0, None, [0, 1.5], {1}, (0, "a")])
def test_axis_type_error(axis):
    with pytest.raises(TypeError, match="Expected an int or a list/tuple of ints for the argument 'axis', but received: "):
        LayerNormalization(axis=axis)
    with pytest.raises(TypeError, match="argument 'axis'"):
        RMSNormalization(axis=axis)


def test_axis_canonicalized_on_build():
    layer = LayerNormalization()
    layer(np.zeros((2, 3)))
    assert layer.axis == [1]
    layer = LayerNormalization(axis=(-1, 1))
    layer.build((2, 3, 4, 5))
    assert layer.axis == [1, 3] and layer.gamma.shape == (3, 5)
    layer = RMSNormalization(axis=[2, 0])
    layer.build((2, 3, 4))
    assert layer.axis == [0, 2] and layer.scale.shape == (2, 4)


def test_axis_out_of_bounds_and_duplicates():
    with pytest.raises(ValueError, match=r"^axis 99 is out of bounds for an array with dimension 2\.$"):
        LayerNormalization(axis=99)(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="axis -3 is out of bounds for an array with dimension 2"):
        LayerNormalization(axis=[-3])(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Duplicate axes are not allowed"):
        LayerNormalization(axis=[1, -1])(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Duplicate axes are not allowed"):
        RMSNormalization(axis=[0, 0]).build((2, 3))
    with pytest.raises(ValueError, match="at least one axis"):
        LayerNormalization(axis=[]).build((2, 3))


def test_compute_output_shape_validates_without_building():
    layer = LayerNormalization(axis=[1, 2])
    assert layer.compute_output_shape((None, 3, 4)) == (None, 3, 4)
    assert not layer.built
    with pytest.raises(ValueError, match="axis 2 is out of bounds for an array with dimension 2"):
        layer.compute_output_shape((3, 4))
    with pytest.raises(ValueError, match="Duplicate axes"):
        LayerNormalization(axis=[0, -2]).compute_output_shape((3, 4))
    with pytest.raises(TypeError, match="Invalid input shape type"):
        layer.compute_output_shape(5)


def test_build_with_unknown_batch_dims_and_known_feature_dims():
    layer = LayerNormalization()
    layer.build((None, None, 8))
    assert layer.built and layer.gamma.shape == (8,)
    with pytest.raises(ValueError, match="known sizes"):
        LayerNormalization(axis=1).build((None, None, 8))


def test_incompatible_input_after_build():
    layer = LayerNormalization()
    layer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="incompatible"):
        layer(np.zeros((2, 5)))


def test_rms_scaling_not_supported():
    with pytest.raises(NotImplementedError, match="rms_scaling"):
        LayerNormalization(rms_scaling=True)


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------

def test_float16_input_computed_in_float32():
    x = (np.random.default_rng(2).normal(size=(6, 32)) * 4).astype(np.float16)
    layer = LayerNormalization()
    y = layer(x)
    assert y.dtype == np.float16 and layer.gamma.dtype == np.float32
    expected = keras_layer_norm(x.astype(np.float32), -1)
    np.testing.assert_allclose(y.astype(np.float64), expected, atol=4e-3)
    dx = layer.backward(np.ones_like(x))
    assert dx.shape == x.shape and layer.gradients["gamma"].dtype == np.float32


def test_bfloat16_input():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.random.default_rng(3).normal(size=(4, 16)).astype(ml_dtypes.bfloat16)
    y = LayerNormalization()(x)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y.astype(np.float64), keras_layer_norm(x.astype(np.float32), -1), atol=3e-2)


def test_float64_and_integer_inputs():
    x = np.arange(10.0).reshape(2, 5)
    assert LayerNormalization()(x).dtype == np.float64
    y = LayerNormalization()(np.arange(10).reshape(2, 5))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, keras_layer_norm(x, -1), atol=1e-6)


def test_dtype_argument_sets_weight_dtype():
    layer = LayerNormalization(dtype="float64")
    layer(np.zeros((2, 3)))
    assert layer.gamma.dtype == np.float64 and layer.dtype == "float64"
    layer = RMSNormalization(dtype=np.float16)
    layer.build((2, 3))
    assert layer.scale.dtype == np.float16 and layer.dtype == "float16"
    # a serialized Keras DTypePolicy and Keras' mixed policies are understood
    layer = LayerNormalization(dtype={"module": "keras", "class_name": "DTypePolicy",
                                      "config": {"name": "float64"}})
    assert layer.dtype == "float64"
    layer = LayerNormalization(dtype="mixed_float16")
    layer.build((1, 3))
    assert layer.gamma.dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        LayerNormalization(dtype="int32")


# --------------------------------------------------------------------------
# initializers, regularizers, constraints on the layer
# --------------------------------------------------------------------------

INITIALIZER_NAMES = [
    "zeros", "Zeros", "ones", "Ones", "constant", "Constant", "random_normal", "RandomNormal",
    "random_uniform", "RandomUniform", "truncated_normal", "TruncatedNormal",
    "glorot_uniform", "GlorotUniform", "glorot_normal", "GlorotNormal", "he_normal", "HeNormal",
    "he_uniform", "HeUniform", "lecun_normal", "LecunNormal", "lecun_uniform", "LecunUniform",
    "variance_scaling", "VarianceScaling", "normal", "uniform", "one", "zero",
]


@pytest.mark.parametrize("name", INITIALIZER_NAMES)
def test_every_initializer_identifier(name):
    layer = LayerNormalization(gamma_initializer=name, beta_initializer=name)
    layer.build((2, 7))
    assert layer.gamma.shape == (7,) and layer.gamma.dtype == np.float32
    assert np.all(np.isfinite(layer.gamma))


@pytest.mark.parametrize("name", ["orthogonal", "Orthogonal", "identity", "Identity"])
def test_matrix_initializers_on_two_axes(name):
    layer = LayerNormalization(axis=[1, 2], gamma_initializer=name)
    layer.build((2, 4, 4))
    g = layer.gamma.astype(np.float64)
    np.testing.assert_allclose(g @ g.T, np.eye(4), atol=1e-5)


def test_initializer_instances_callables_and_configs():
    layer = LayerNormalization(
        gamma_initializer=initializers.RandomNormal(mean=1.0, stddev=0.5, seed=7),
        beta_initializer=lambda shape, dtype=None: np.full(shape, 0.25, dtype=dtype),
    )
    layer.build((3, 1000))
    assert abs(layer.gamma.mean() - 1.0) < 0.1 and abs(layer.gamma.std() - 0.5) < 0.05
    np.testing.assert_array_equal(layer.beta, 0.25)
    again = LayerNormalization(gamma_initializer=initializers.RandomNormal(mean=1.0, stddev=0.5, seed=7))
    again.build((3, 1000))
    np.testing.assert_array_equal(layer.gamma, again.gamma)  # seeded -> reproducible
    layer = LayerNormalization(gamma_initializer={"class_name": "Constant", "config": {"value": 3.0}})
    layer.build((1, 2))
    np.testing.assert_array_equal(layer.gamma, [3.0, 3.0])
    with pytest.raises(ValueError, match="Could not interpret initializer identifier: nope"):
        LayerNormalization(gamma_initializer="nope")


def test_regularizer_losses_and_gradients():
    x = np.random.default_rng(4).normal(size=(3, 4))
    layer = LayerNormalization(gamma_regularizer=regularizers.L2(0.1), beta_regularizer="l1",
                               gamma_initializer=initializers.Constant(2.0),
                               beta_initializer=initializers.Constant(-1.0))
    layer(x)
    assert layer.losses == pytest.approx([0.1 * 4 * 4.0, 0.01 * 4 * 1.0])
    dx = layer.backward(np.ones_like(x))
    _, dgamma, dbeta = ln.layer_norm_backward(np.ones_like(x), x, *ln.layer_norm(
        x, -1, layer.gamma, layer.beta, 1e-3, return_stats=True)[1:], axis=-1, weight=layer.gamma)
    np.testing.assert_allclose(layer.gradients["gamma"], dgamma + 2 * 0.1 * 2.0, atol=1e-6)
    np.testing.assert_allclose(layer.gradients["beta"], dbeta - 0.01, atol=1e-6)
    assert dx.shape == x.shape


def test_regularizer_strings_and_callables():
    for ident, cls in [("l1", regularizers.L1), ("l2", regularizers.L2), ("l1l2", regularizers.L1L2),
                       ("L1L2", regularizers.L1L2), ("orthogonal_regularizer", regularizers.OrthogonalRegularizer)]:
        assert isinstance(LayerNormalization(gamma_regularizer=ident).gamma_regularizer, cls)
    layer = LayerNormalization(gamma_regularizer=lambda w: float(np.sum(w ** 3)))
    x = np.random.default_rng(5).normal(size=(2, 3))
    layer(x)
    assert layer.losses == pytest.approx([3.0])
    layer.backward(np.zeros_like(x))
    # no data gradient, only the penalty's: d/dw sum(w^3) = 3 w^2 = 3 at w = 1
    np.testing.assert_allclose(layer.gradients["gamma"], 3.0, atol=1e-4)
    with pytest.raises(ValueError, match="Could not interpret regularizer identifier"):
        LayerNormalization(beta_regularizer="l3")
    with pytest.raises(ValueError, match="Invalid value for argument l2"):
        LayerNormalization(beta_regularizer=regularizers.L2(-1.0))


def test_apply_constraints():
    layer = LayerNormalization(gamma_constraint="non_neg", beta_constraint=constraints.MaxNorm(1.0))
    layer.build((1, 2))
    layer.set_weights([np.array([-1.0, 2.0]), np.array([3.0, 4.0])])
    gamma_ref = layer.gamma
    layer.apply_constraints()
    assert layer.gamma is gamma_ref  # in place
    np.testing.assert_allclose(layer.gamma, [0.0, 2.0])
    np.testing.assert_allclose(layer.beta, [0.6, 0.8], atol=1e-6)
    for ident, cls in [("max_norm", constraints.MaxNorm), ("min_max_norm", constraints.MinMaxNorm),
                       ("unit_norm", constraints.UnitNorm), ("NonNeg", constraints.NonNeg)]:
        assert isinstance(LayerNormalization(gamma_constraint=ident).gamma_constraint, cls)
    layer = LayerNormalization(gamma_constraint=lambda w: np.clip(w, 0.0, 0.5))
    layer.build((1, 3))
    layer.apply_constraints()
    np.testing.assert_array_equal(layer.gamma, 0.5)
    with pytest.raises(ValueError, match="Could not interpret constraint identifier"):
        LayerNormalization(gamma_constraint="positive")


# --------------------------------------------------------------------------
# trainable, names, weights, config
# --------------------------------------------------------------------------

def test_trainable_and_frozen():
    x = np.random.default_rng(6).normal(size=(3, 5))
    dy = np.random.default_rng(7).normal(size=(3, 5))
    layer = LayerNormalization(gamma_regularizer="l2")
    layer(x)
    assert layer.trainable_weights == layer.weights and layer.non_trainable_weights == []
    dx_trainable = layer.backward(dy)
    assert set(layer.gradients) == {"gamma", "beta"}
    layer.trainable = False
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 2
    assert layer.losses == []
    dx_frozen = layer.backward(dy)
    assert layer.gradients == {}
    np.testing.assert_allclose(dx_frozen, dx_trainable)
    frozen = RMSNormalization(trainable=False)
    frozen(x)
    frozen.backward(dy)
    assert frozen.gradients == {} and frozen.trainable_weights == []


def test_unique_auto_names_and_invalid_names():
    names = [LayerNormalization().name for _ in range(3)]
    assert len(set(names)) == 3 and all(n.startswith("layer_normalization") for n in names)
    base = names[0]
    if base != "layer_normalization":
        k = int(base.rsplit("_", 1)[1])
        assert names == [f"layer_normalization_{k}", f"layer_normalization_{k + 1}",
                         f"layer_normalization_{k + 2}"]
    assert RMSNormalization().name.startswith("rms_normalization")
    assert LayerNormalization(name="ln").name == "ln"
    for bad in ["a/b", 3, b"ln"]:
        with pytest.raises(ValueError, match="Argument `name` must be a string"):
            LayerNormalization(name=bad)


def test_auto_names_sequence_in_fresh_process():
    import os
    import subprocess
    import sys
    code = ("from layernorm import LayerNormalization as L, RMSNormalization as R, Sequential as S;"
            "print([L().name, L().name, L().name, R().name, S().name, S().name])")
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(ln.__file__)))
    env = dict(os.environ, PYTHONPATH=package_parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env).stdout
    assert eval(out) == ["layer_normalization", "layer_normalization_1", "layer_normalization_2",
                         "rms_normalization", "sequential", "sequential_1"]


def test_weights_get_set():
    layer = LayerNormalization(axis=[1, 2])
    layer.build((2, 3, 4))
    assert [w.shape for w in layer.get_weights()] == [(3, 4), (3, 4)]
    got = layer.get_weights()
    got[0][...] = 5  # copies: the layer is unaffected
    assert np.all(layer.gamma == 1)
    new = [np.full((3, 4), 2.0), np.full((3, 4), -1.0)]
    layer.set_weights(new)
    np.testing.assert_array_equal(layer.gamma, 2.0)
    np.testing.assert_array_equal(layer.beta, -1.0)
    assert layer.gamma.dtype == np.float32
    with pytest.raises(ValueError, match=r"weight shape \(3, 4\) is not compatible with provided weight shape \(4, 3\)"):
        layer.set_weights([np.zeros((4, 3)), np.zeros((3, 4))])
    with pytest.raises(ValueError, match="weight shape"):
        layer.set_weights([np.zeros((3, 4)), np.zeros((3,))])
    np.testing.assert_array_equal(layer.gamma, 2.0)  # nothing written on failure
    with pytest.raises(ValueError, match="was expecting 2 weights"):
        layer.set_weights([np.zeros((3, 4))])
    assert LayerNormalization().weights == []


def test_get_config_from_config_round_trip():
    layer = LayerNormalization(
        axis=[1, 2], epsilon=1e-4, center=False,
        gamma_initializer=initializers.RandomUniform(-0.5, 0.5, seed=3),
        gamma_regularizer=regularizers.L1L2(l1=0.1, l2=0.2),
        gamma_constraint=constraints.MinMaxNorm(0.5, 2.0, rate=0.5, axis=1),
        beta_regularizer=regularizers.OrthogonalRegularizer(0.3, mode="columns"),
        trainable=False, name="my_ln", dtype="float64",
    )
    config = layer.get_config()
    assert config["gamma_initializer"]["class_name"] == "RandomUniform"
    assert config["gamma_initializer"]["config"] == {"seed": 3, "minval": -0.5, "maxval": 0.5}
    assert config["gamma_regularizer"] == {"module": "layernorm.regularizers", "class_name": "L1L2",
                                           "config": {"l1": 0.1, "l2": 0.2}, "registered_name": None}
    clone = LayerNormalization.from_config(config)
    assert clone.get_config() == config
    assert clone.name == "my_ln" and clone.trainable is False and clone.dtype == "float64"
    assert isinstance(clone.gamma_constraint, constraints.MinMaxNorm)
    assert clone.gamma_constraint.rate == 0.5
    x = np.random.default_rng(8).normal(size=(2, 3, 4))
    layer(x)
    clone(x)
    np.testing.assert_array_equal(layer.gamma, clone.gamma)  # seeded initializer
    np.testing.assert_array_equal(layer(x), clone(x))
    # config of a built layer stores the canonical axes and rebuilds identically
    built = LayerNormalization.from_config(layer.get_config())
    built.build(x.shape)
    built.set_weights(layer.get_weights())
    np.testing.assert_array_equal(built(x), layer(x))
    rms = RMSNormalization(axis=[-1], epsilon=1e-5, name="r")
    assert RMSNormalization.from_config(rms.get_config()).get_config() == rms.get_config()


def test_from_keras_config():
    # what keras 3 writes for LayerNormalization(gamma_regularizer="l2").get_config()
    config = {
        "name": "layer_normalization", "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                  "registered_name": None},
        "axis": [-1], "epsilon": 0.001, "center": True, "scale": True, "rms_scaling": False,
        "beta_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                             "registered_name": None},
        "gamma_initializer": {"module": "keras.initializers", "class_name": "Ones", "config": {},
                              "registered_name": None},
        "beta_regularizer": None,
        "gamma_regularizer": {"module": "keras.regularizers", "class_name": "L2",
                              "config": {"l2": 0.009999999776482582}, "registered_name": None},
        "beta_constraint": None, "gamma_constraint": None,
    }
    layer = LayerNormalization.from_config(config)
    assert isinstance(layer.gamma_regularizer, regularizers.L2)
    assert layer.dtype == "float32"
    assert layer(np.zeros((2, 3))).shape == (2, 3) and layer.axis == [1]


# --------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 3, 4), [1, 2]), ((2, 3, 4), [0, 2]),
                                        ((4, 3, 2), 1), ((2, 2, 3, 2), [0, 1, 3])])
def test_layer_norm_gradients_match_finite_differences(shape, axis):
    rng = np.random.default_rng(9)
    x = rng.normal(size=shape)
    w = rng.normal(size=shape)  # loss = sum(w * y)
    layer = LayerNormalization(axis=axis, epsilon=1e-3, dtype="float64")
    layer.build(shape)
    layer.set_weights([rng.normal(size=layer.gamma.shape), rng.normal(size=layer.beta.shape)])

    def loss():
        return float(np.sum(w * keras_layer_norm(x, axis, layer.gamma, layer.beta)))

    layer(x)
    dx = layer.backward(w)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-6)
    np.testing.assert_allclose(layer.gradients["gamma"], numerical_grad(loss, layer.gamma), atol=1e-6)
    np.testing.assert_allclose(layer.gradients["beta"], numerical_grad(loss, layer.beta), atol=1e-6)


@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 3, 4), [0, 2])])
def test_rms_norm_gradients_match_finite_differences(shape, axis):
    rng = np.random.default_rng(10)
    x = rng.normal(size=shape)
    w = rng.normal(size=shape)
    layer = RMSNormalization(axis=axis, dtype="float64")
    layer.build(shape)
    layer.set_weights([rng.normal(size=layer.scale.shape)])

    def loss():
        return float(np.sum(w * keras_rms_norm(x, axis, layer.scale)))

    layer(x)
    dx = layer.backward(w)
    assert set(layer.gradients) == {"scale"}
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-6)
    np.testing.assert_allclose(layer.gradients["scale"], numerical_grad(loss, layer.scale), atol=1e-6)


def test_regularized_gradients_match_finite_differences():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 2, 3))
    w = rng.normal(size=x.shape)
    layer = LayerNormalization(axis=[1, 2], dtype="float64",
                               gamma_regularizer=regularizers.OrthogonalRegularizer(0.5),
                               beta_regularizer=regularizers.L1L2(0.1, 0.2),
                               gamma_initializer=initializers.RandomNormal(1.0, 0.3, seed=1),
                               beta_initializer=initializers.RandomNormal(0.5, 0.3, seed=2))

    def loss():
        return float(np.sum(w * keras_layer_norm(x, [1, 2], layer.gamma, layer.beta)) + sum(layer.losses))

    layer(x)
    layer.backward(w)
    np.testing.assert_allclose(layer.gradients["gamma"], numerical_grad(loss, layer.gamma), atol=1e-5)
    np.testing.assert_allclose(layer.gradients["beta"], numerical_grad(loss, layer.beta), atol=1e-5)


def test_backward_errors():
    layer = LayerNormalization()
    with pytest.raises(RuntimeError, match="before it was called"):
        layer.backward(np.zeros((2, 3)))
    layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.zeros((3, 2)))


def test_backward_converts_dy_and_keeps_canonical_axes_for_other_ranks():
    rng = np.random.default_rng(16)
    layer = LayerNormalization()  # axis -1 -> [1] on rank 2, then fixed like Keras
    layer.build((None, 4))
    x3 = rng.normal(size=(2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(x3), keras_layer_norm(x3, 1), atol=1e-5)
    dy = rng.normal(size=x3.shape)  # float64 dy for a float32 input
    dx = layer.backward(dy)
    assert dx.dtype == np.float32 and dx.shape == x3.shape
    expected = ln.layer_norm_backward(dy.astype(np.float32), x3, *ln.layer_norm(
        x3, 1, layer.gamma, layer.beta, 1e-3, return_stats=True)[1:], axis=1, weight=layer.gamma)[0]
    np.testing.assert_allclose(dx, expected, atol=1e-6)


def test_sgd_lowers_regression_loss():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(64, 8))
    true_scale, true_shift = rng.uniform(0.5, 2.0, 8), rng.normal(size=8)
    cases = [(LayerNormalization(dtype="float64", gamma_constraint="non_neg"),
              keras_layer_norm(x, -1, true_scale, true_shift)),
             (RMSNormalization(dtype="float64"), keras_rms_norm(x, -1, true_scale))]
    for layer, target in cases:
        losses = []
        for _ in range(30):
            y = layer(x)
            losses.append(float(np.mean((y - target) ** 2)))
            layer.backward(2 * (y - target) / y.size)
            for name, grad in layer.gradients.items():
                getattr(layer, name)[...] -= 2.0 * grad
            layer.apply_constraints()
        assert losses[-1] < 0.1 * losses[0], (type(layer).__name__, losses[0], losses[-1])


# --------------------------------------------------------------------------
# RMSNormalization
# --------------------------------------------------------------------------

def test_rms_normalization_matches_keras():
    layer = RMSNormalization()
    assert layer.axis == -1 and layer.epsilon == 1e-6
    x = np.random.default_rng(13).random((1, 10)).astype(np.float32)
    y = layer(x)
    assert layer.scale.shape == (10,) and y.dtype == np.float32
    np.testing.assert_allclose(y, keras_rms_norm(x, -1, np.ones(10)), atol=1e-5)
    assert [w is layer.scale for w in layer.weights] == [True]
    layer = RMSNormalization()
    layer.build([5, 20, 30, 10])
    assert layer.scale.shape == (10,)
    x16 = x.astype(np.float16)
    assert RMSNormalization()(x16).dtype == np.float16


def test_rms_normalization_losses_and_constraints_are_empty():
    layer = RMSNormalization()
    layer.build((2, 3))
    assert layer.losses == []
    layer.apply_constraints()
    np.testing.assert_array_equal(layer.scale, 1.0)


# --------------------------------------------------------------------------
# Sequential and layer_normalization
# --------------------------------------------------------------------------

def test_sequential_forward_backward():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(4, 3, 5))
    first = LayerNormalization(axis=[1, 2], dtype="float64",
                               gamma_initializer=initializers.RandomNormal(1.0, 0.5, seed=3))
    second = RMSNormalization(dtype="float64")
    third = ln.LayerNorm(5, dtype=np.float64)
    model = Sequential([first, second])
    model.add(third)
    assert model.layers == [first, second, third] and len(model) == 3
    y = model(x)
    np.testing.assert_allclose(y, third(second(first(x))))
    dy = rng.normal(size=y.shape)
    dx = model.backward(dy)
    expected = first.backward(second.backward(third.backward(dy)))
    np.testing.assert_allclose(dx, expected)

    def loss():
        return float(np.sum(dy * model(x)))

    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-6)
    assert len(model.weights) == 2 + 1  # Keras-style layers' weights; modules expose parameters()


def test_sequential_with_plain_callable():
    model = Sequential(name="seq")
    model.add(lambda a: 2 * np.asarray(a))
    model.add(LayerNormalization())
    x = np.random.default_rng(15).normal(size=(2, 4))
    np.testing.assert_allclose(model(x), keras_layer_norm(2 * x, -1), atol=1e-6)
    with pytest.raises(TypeError, match="plain callable"):
        model.backward(np.ones((2, 4)))
    assert model.name == "seq"
    with pytest.raises(TypeError, match="Only layers, modules or callables"):
        model.add(3)
    with pytest.raises(ValueError, match="unique names"):
        model.add(LayerNormalization(name=model.layers[1].name))
    last = model.layers[-1]
    assert model.pop() is last and len(model) == 1


def test_sequential_names():
    a, b = Sequential(), Sequential()
    assert a.name.startswith("sequential") and a.name != b.name
    with pytest.raises(ValueError, match="Argument `name`"):
        Sequential(name="a/b")


def test_layer_normalization_composition():
    layer = layer_normalization(axis=[1], epsilon=1e-2, name="composed")
    assert isinstance(layer, LayerNormalization) and layer.epsilon == 1e-2 and layer.name == "composed"
    model = Sequential()
    returned = layer_normalization(model, center=False)
    assert returned is model and isinstance(model.layers[-1], LayerNormalization)
    assert model.layers[-1].center is False
    x = [[0.0, 1.0, 2.0, 3.0, 4.0]]
    y = layer_normalization(x, beta_initializer="ones")
    np.testing.assert_allclose(y, [[-0.41386, 0.29307, 1.0, 1.70693, 2.41386]], atol=1e-5)
    assert ln.layer_normalization is layer_normalization
