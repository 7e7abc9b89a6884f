"""The output buffer pool: large outputs reuse freed blocks, never live ones."""
import numpy as np

import layernorm as ln
from layernorm import _buffer_pool

from conftest import python_subprocess

BIG = (512, 1024)          # 2 MB of float32: pooled


def test_large_outputs_are_correct_and_reuse_freed_blocks():
    x = np.random.default_rng(0).standard_normal(BIG, dtype=np.float32)
    first = ln.layer_norm(x)
    address = first.__array_interface__["data"][0]
    expected = first.copy()
    del first                                  # its block goes back to the pool
    assert _buffer_pool.cached_bytes() >= x.nbytes
    second = ln.layer_norm(x)
    assert second.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(second, expected)


def test_live_outputs_never_share_a_block():
    x = np.random.default_rng(1).standard_normal(BIG, dtype=np.float32)
    # eps=0: every scaled copy normalizes to the same values (up to rounding)
    outputs = [ln.layer_norm(x * (i + 1), eps=0.0) for i in range(12)]   # more than the pool's slots
    addresses = {o.__array_interface__["data"][0] for o in outputs}
    assert len(addresses) == len(outputs)
    for o in outputs:
        np.testing.assert_allclose(o, outputs[0], atol=2e-6)


def test_blocks_are_reused_only_for_the_same_size():
    a = _buffer_pool.empty((300, 1024), np.float32)
    a_address = a.__array_interface__["data"][0]
    del a
    b = _buffer_pool.empty((301, 1024), np.float32)
    assert b.__array_interface__["data"][0] != a_address
    b[...] = 1                                 # the block is fully writable
    c = _buffer_pool.empty((300, 1024), np.float32)
    assert c.__array_interface__["data"][0] == a_address


def handler_name(array):
    try:
        from numpy._core.multiarray import get_handler_name
    except ImportError:                        # NumPy 1.x
        from numpy.core.multiarray import get_handler_name
    return get_handler_name(array)


def test_outputs_from_128_kb_are_pooled():
    """From glibc's first mmap threshold up: outputs of a few hundred KB
    otherwise came back as fresh (page-faulting) pages on every call."""
    x = np.random.default_rng(2).standard_normal((16, 64, 56))     # 448 KB
    y, s = ln.add_layer_norm(x, np.ones_like(x), axis=1)
    np.testing.assert_allclose(s, x + 1)
    assert handler_name(y) == handler_name(s) == "layernorm_buffer_pool"
    dx = ln.layer_norm_backward(x, x, *ln.layer_norm(x, axis=1, return_stats=True)[1:], axis=1)[0]
    assert handler_name(dx) == "layernorm_buffer_pool"
    small = ln.layer_norm(x[:, :, :8], axis=1)                       # 64 KB
    assert handler_name(small) != "layernorm_buffer_pool"


def test_small_arrays_and_resize_use_plain_memory():
    small = _buffer_pool.empty((4, 4), np.float64)
    assert small.shape == (4, 4) and small.flags.c_contiguous
    big = _buffer_pool.empty((2 << 20,), np.uint8)
    big.resize((3 << 20,), refcheck=False)     # realloc through the handler
    big[-1] = 7
    assert big[-1] == 7


def test_environment_turns_the_pool_off():
    out = python_subprocess(
        "import numpy as np, layernorm as ln; from layernorm import _buffer_pool as p;"
        "y = ln.layer_norm(np.ones((512, 1024), np.float32)); del y; print(p.cached_bytes())",
        LAYERNORM_BUFFER_POOL_MB="0")
    assert out.strip() == "0"


def test_new_blocks_start_on_a_cache_line():
    """The kernels stream large outputs only when they are 64-byte aligned."""
    for size in (1 << 20, (1 << 20) + 12, 3 << 20):
        a = _buffer_pool.empty((size // 4,), np.float32)
        assert a.ctypes.data % 64 == 0
        del a


def test_blocks_of_4_mb_and_more_start_on_a_huge_page():
    """They are advised to use transparent huge pages, as NumPy's own large
    arrays are; that needs them to start on a 2 MB boundary."""
    for size in (4 << 20, (5 << 20) + 12):
        a = _buffer_pool.empty((size // 4,), np.float32)
        assert a.ctypes.data % (2 << 20) == 0
        a[:] = 1.5
        assert np.all(a == 1.5)
        del a
