"""PyTorch-style modules: LayerNorm and RMSNorm.

Compared with the real torch modules when torch is importable (never required).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import layernorm as ln
from layernorm.modules import LayerNorm, RMSNorm
from conftest import numeric_gradient as numerical_grad


def ref_layer_norm(x, k, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm over the last k axes, in float64."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - k, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def ref_rms_norm(x, k, weight=None, eps=None):
    x = np.asarray(x, dtype=np.float64)
    eps = np.finfo(np.float32).eps if eps is None else eps
    axes = tuple(range(x.ndim - k, x.ndim))
    y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    return y if weight is None else y * weight




X = np.random.default_rng(0).normal(size=(20, 5, 10, 10)).astype(np.float32)


# --------------------------------------------------------------------------
# construction, the seed's examples, repr
# --------------------------------------------------------------------------

@pytest.mark.parametrize("make,k", [
    (lambda: LayerNorm(X.shape[1:]), 3),
    (lambda: LayerNorm(X.shape[1:], elementwise_affine=False), 3),
    (lambda: LayerNorm((10, 10)), 2),
    (lambda: LayerNorm(10), 1),
    (lambda: LayerNorm([10, 10], bias=False), 2),
])
def test_seed_examples(make, k):
    m = make()
    y = m(X)
    assert y.shape == X.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref_layer_norm(X, k), atol=1e-5)


def test_parameters_and_defaults():
    m = LayerNorm(10)
    assert m.normalized_shape == (10,) and m.eps == 1e-5 and m.elementwise_affine
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    np.testing.assert_array_equal(m.weight, np.ones(10))
    np.testing.assert_array_equal(m.bias, np.zeros(10))
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert [p is q for p, q in zip(m.parameters(), (m.weight, m.bias))] == [True, True]
    m = LayerNorm([3, 4], bias=False)
    assert m.bias is None and m.weight.shape == (3, 4) and list(m.state_dict()) == ["weight"]
    m = LayerNorm(4, elementwise_affine=False)
    assert m.weight is None and m.bias is None and list(m.parameters()) == []
    assert LayerNorm(np.int64(4)).normalized_shape == (4,)
    assert LayerNorm(np.array([2, 3])).normalized_shape == (2, 3)
    assert LayerNorm(3, dtype=np.float64).weight.dtype == np.float64
    r = RMSNorm(6)
    assert r.eps is None and r.weight.shape == (6,) and [n for n, _ in r.named_parameters()] == ["weight"]
    assert RMSNorm(6, elementwise_affine=False).weight is None


def test_repr_like_pytorch():
    assert repr(LayerNorm(10)) == "LayerNorm((10,), eps=1e-05, elementwise_affine=True)"
    assert repr(LayerNorm((10, 10), eps=1e-3, elementwise_affine=False)) == \
        "LayerNorm((10, 10), eps=0.001, elementwise_affine=False)"
    assert repr(LayerNorm(10, bias=False)) == "LayerNorm((10,), eps=1e-05, elementwise_affine=True, bias=False)"
    assert repr(RMSNorm(4)) == "RMSNorm((4,), eps=None, elementwise_affine=True)"
    assert repr(RMSNorm([2, 3], eps=1e-6)) == "RMSNorm((2, 3), eps=1e-06, elementwise_affine=True)"


def test_constructor_errors():
    with pytest.raises(TypeError, match="normalized_shape"):
        LayerNorm(2.5)
    with pytest.raises(TypeError, match="normalized_shape"):
        LayerNorm([2, "3"])
    with pytest.raises(ValueError, match="negative"):
        LayerNorm(-1)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(3, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(3, eps=None)
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(3, eps="small")


def test_forward_validation_messages():
    x = np.zeros((1, 2, 10, 20))
    with pytest.raises(ValueError, match=r"^Given normalized_shape=\[2\], expected input with shape \[\*, 2\], "
                                         r"but got input of size \[1, 2, 10, 20\]$"):
        LayerNorm(2)(x)
    with pytest.raises(ValueError, match=r"Given normalized_shape=\[10, 10\], expected input with shape "
                                         r"\[\*, 10, 10\], but got input of size \[1, 2, 10, 20\]"):
        LayerNorm((10, 10))(x)
    with pytest.raises(ValueError, match=r"expected input with shape \[\*, 2, 3\], but got input of size \[3\]"):
        RMSNorm((2, 3))(np.zeros(3))
    m = LayerNorm([])
    with pytest.raises(ValueError, match=r"^Expected normalized_shape to be at least 1-dimensional, "
                                         r"i\.e\., containing at least one element, but got normalized_shape = \[\]$"):
        m(x)
    with pytest.raises(ValueError, match="at least 1-dimensional"):
        RMSNorm(())(x)


# --------------------------------------------------------------------------
# values and dtypes
# --------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_affine_values(shape, data):
    k = data.draw(st.integers(1, len(shape)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = (rng.normal(size=shape) * 2 + 3).astype(np.float32)
    m = LayerNorm(shape[len(shape) - k:])
    m.load_state_dict({"weight": rng.normal(size=m.normalized_shape),
                       "bias": rng.normal(size=m.normalized_shape)})
    np.testing.assert_allclose(m(x), ref_layer_norm(x, k, m.weight, m.bias), atol=1e-5)
    r = RMSNorm(shape[len(shape) - k:], eps=1e-6)
    r.load_state_dict({"weight": rng.normal(size=r.normalized_shape)})
    np.testing.assert_allclose(r(x), ref_rms_norm(x, k, r.weight, 1e-6), atol=1e-5)


def test_rms_norm_default_eps_and_dtypes():
    x = np.random.default_rng(1).normal(size=(4, 8))
    np.testing.assert_allclose(RMSNorm(8)(x.astype(np.float32)), ref_rms_norm(x.astype(np.float32), 1), atol=1e-6)
    y64 = RMSNorm(8, dtype=np.float64)(x)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, ref_rms_norm(x, 1, eps=np.finfo(np.float64).eps), atol=1e-12)
    y16 = LayerNorm(8)(x.astype(np.float16))
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16.astype(np.float64), ref_layer_norm(x.astype(np.float16), 1), atol=4e-3)
    assert LayerNorm(8)(np.arange(16).reshape(2, 8)).dtype == np.float32


# --------------------------------------------------------------------------
# state dict
# --------------------------------------------------------------------------

def test_state_dict_round_trip():
    a = LayerNorm((2, 3))
    a.weight[...] = np.arange(6).reshape(2, 3)
    a.bias[...] = -1
    state = a.state_dict()
    assert list(state) == ["weight", "bias"] and state["weight"] is a.weight
    b = LayerNorm((2, 3))
    result = b.load_state_dict({k: v.tolist() for k, v in state.items()})  # lists are fine
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(b.weight, a.weight)
    np.testing.assert_array_equal(b.bias, a.bias)
    assert b.weight.dtype == np.float32
    x = np.random.default_rng(2).normal(size=(4, 2, 3))
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_refuses_wrong_shapes_and_keys():
    m = LayerNorm(10)
    with pytest.raises(ValueError, match=r"size mismatch for weight: copying a param with shape \(5,\) "
                                         r"from checkpoint, the shape in current model is \(10,\)"):
        m.load_state_dict({"weight": np.full(5, 2.0), "bias": np.full(10, 2.0)})
    np.testing.assert_array_equal(m.bias, 0.0)  # nothing written on failure
    with pytest.raises(ValueError, match='Missing key\\(s\\) in state_dict: "bias"'):
        m.load_state_dict({"weight": np.ones(10)})
    with pytest.raises(ValueError, match='Unexpected key\\(s\\) in state_dict: "foo"'):
        m.load_state_dict({"weight": np.ones(10), "bias": np.zeros(10), "foo": 1})
    result = m.load_state_dict({"weight": np.full(10, 3.0), "foo": 1}, strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["foo"]
    np.testing.assert_array_equal(m.weight, 3.0)
    with pytest.raises(ValueError, match="size mismatch"):
        m.load_state_dict({"weight": np.ones((10, 1))}, strict=False)
    with pytest.raises(ValueError, match="Unexpected key"):
        LayerNorm(3, bias=False).load_state_dict({"weight": np.ones(3), "bias": np.zeros(3)})


# --------------------------------------------------------------------------
# backward and training
# --------------------------------------------------------------------------

@pytest.mark.parametrize("normalized_shape", [4, (3, 4), (2, 3, 4)])
def test_layer_norm_gradients_match_finite_differences(normalized_shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4))
    w = rng.normal(size=x.shape)
    m = LayerNorm(normalized_shape, dtype=np.float64)
    m.weight[...] = rng.normal(size=m.weight.shape)
    m.bias[...] = rng.normal(size=m.bias.shape)
    k = len(m.normalized_shape)

    def loss():
        return float(np.sum(w * ref_layer_norm(x, k, m.weight, m.bias)))

    m(x)
    dx = m.backward(w)
    assert set(m.gradients) == {"weight", "bias"}
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-6)
    np.testing.assert_allclose(m.gradients["weight"], numerical_grad(loss, m.weight), atol=1e-6)
    np.testing.assert_allclose(m.gradients["bias"], numerical_grad(loss, m.bias), atol=1e-6)


def test_rms_norm_and_no_affine_gradients():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 5))
    w = rng.normal(size=x.shape)
    r = RMSNorm(5, eps=1e-6, dtype=np.float64)
    r.weight[...] = rng.normal(size=5)

    def loss():
        return float(np.sum(w * ref_rms_norm(x, 1, r.weight, 1e-6)))

    r(x)
    dx = r.backward(w)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), atol=1e-6)
    np.testing.assert_allclose(r.gradients["weight"], numerical_grad(loss, r.weight), atol=1e-6)
    plain = LayerNorm(5, elementwise_affine=False)
    plain(x)
    dx = plain.backward(w)
    assert plain.gradients == {}
    np.testing.assert_allclose(dx, numerical_grad(lambda: float(np.sum(w * ref_layer_norm(x, 1))), x), atol=1e-6)
    no_bias = LayerNorm(5, bias=False)
    no_bias(x)
    no_bias.backward(w)
    assert set(no_bias.gradients) == {"weight"} and no_bias.gradients["weight"].dtype == np.float32


def test_backward_errors():
    m = LayerNorm(3)
    with pytest.raises(RuntimeError, match="before it was called"):
        m.backward(np.zeros((2, 3)))
    m(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dy"):
        m.backward(np.zeros((2, 4)))
    m(np.ones((2, 3), dtype=np.float32))
    assert m.backward(np.ones((2, 3), dtype=np.float64)).dtype == np.float32  # dy follows x's dtype


def test_sgd_lowers_regression_loss():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 6))
    true_w, true_b = rng.uniform(0.5, 2.0, 6), rng.normal(size=6)
    for m, target in [(LayerNorm(6, dtype=np.float64), ref_layer_norm(x, 1, true_w, true_b)),
                      (RMSNorm(6, dtype=np.float64), ref_rms_norm(x, 1, true_w))]:
        losses = []
        for _ in range(30):
            y = m(x)
            losses.append(float(np.mean((y - target) ** 2)))
            m.backward(2 * (y - target) / y.size)
            for name, p in m.named_parameters():
                p -= 2.0 * m.gradients[name]
        assert losses[-1] < 0.1 * losses[0], (repr(m), losses[0], losses[-1])


def test_train_eval_and_forward_alias():
    m = LayerNorm(3)
    assert m.training and m.eval() is m and not m.training and m.train().training
    x = np.random.default_rng(6).normal(size=(2, 3))
    np.testing.assert_array_equal(m.forward(x), m(x))


# --------------------------------------------------------------------------
# against the real torch modules (optional)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("normalized_shape", [10, (10, 10), (5, 10, 10)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_layer_norm(normalized_shape, bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.nn.LayerNorm(normalized_shape, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    m = LayerNorm(normalized_shape, bias=bias)
    m.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    x64 = X.astype(np.float64)
    xt = torch.tensor(x64, requires_grad=True)
    yt = ref(xt)
    dy = np.random.default_rng(7).normal(size=X.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(m(X), yt.detach().numpy(), atol=1e-5)
    dx = m.backward(dy.astype(np.float32))
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-4)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(m.gradients[name], p.grad.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("eps", [None, 1e-6])
def test_matches_torch_rms_norm(eps):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.nn, "RMSNorm"):
        pytest.skip("torch.nn.RMSNorm needs torch >= 2.4")
    ref = torch.nn.RMSNorm((10, 10), eps=eps)
    with torch.no_grad():
        ref.weight.normal_()
    m = RMSNorm((10, 10), eps=eps)
    m.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    xt = torch.tensor(X, requires_grad=True)
    yt = ref(xt)
    dy = np.random.default_rng(8).normal(size=X.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(m(X), yt.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(m.backward(dy), xt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(m.gradients["weight"], ref.weight.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_torch_state_dict_shapes_and_errors_agree():
    torch = pytest.importorskip("torch")
    ref = torch.nn.LayerNorm((3, 4))
    m = LayerNorm((3, 4))
    assert list(m.state_dict()) == list(ref.state_dict())
    assert all(m.state_dict()[k].shape == tuple(v.shape) for k, v in ref.state_dict().items())
    x = np.zeros((1, 2, 10, 20), dtype=np.float32)
    with pytest.raises(RuntimeError) as torch_error:
        torch.nn.LayerNorm(2)(torch.tensor(x))
    with pytest.raises(ValueError) as our_error:
        LayerNorm(2)(x)
    # same wording; PyTorch omits the space in "size[...]"
    assert str(our_error.value).replace(" ", "") == str(torch_error.value).replace(" ", "")
    assert repr(torch.nn.LayerNorm(10)).startswith(repr(LayerNorm(10))[:-1])


def test_torch_dtype_argument():
    torch = pytest.importorskip("torch")
    assert LayerNorm(3, dtype=torch.float64).weight.dtype == np.float64
    assert RMSNorm(3, dtype=torch.float16).weight.dtype == np.float16


def test_package_exports():
    assert ln.LayerNorm is LayerNorm and ln.RMSNorm is RMSNorm
