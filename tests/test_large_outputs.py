"""Outputs are written with streaming stores when the arrays a call reads and
writes take 32 MB or more together (LN_STREAM_MIN_BYTES): the forward's x and
y, the fused add's x, residual, sum and y, the backward's x, dy and dx.  Rows
must be of whole lines: of 2 KB or more, or shorter when the output starts on
a line (see forward_rows.c for which levels and dtypes).  Streamed outputs
must give the same bits as the ordinary stores of a small call on the same
rows, for any alignment of the output (the unaligned ends of each row are
stored separately), in place and through the long-row split."""
import numpy as np
import pytest

import layernorm as ln
from conftest import ALL_DTYPES, FLOAT32, empty_off_a_line, random_params, use_threads

STREAMED_BYTES = 32 << 20
FORWARD_OUTPUT_BYTES = STREAMED_BYTES // 2          # x and y: 32 MB
FUSED_ADD_OUTPUT_BYTES = STREAMED_BYTES // 4        # x, residual, sum and y
BACKWARD_OUTPUT_BYTES = 11 << 20                   # x, dy and dx: 33 MB


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("rows_kind", ["many rows", "2 KB rows", "short rows", "split rows"])
def test_streamed_outputs_have_the_bits_of_small_calls(simd, rng, dtype, rows_kind):
    """Every row of a streamed (or staged) output has the bits of calls on
    fewer rows, which are not streamed."""
    itemsize = np.dtype(dtype).itemsize
    if rows_kind != "split rows":
        cols = {"many rows": 4096, "2 KB rows": 2048 // itemsize, "short rows": 64}[rows_kind]
        # short rows: a last row group of 3 rows; written through an L1
        # buffer when the output is off a 64-byte line
        shape = (FORWARD_OUTPUT_BYTES // (cols * itemsize) + (3 if rows_kind == "short rows" else 0), cols)
        probe = slice(0, 3)                                  # 3 rows stay a small call
    else:
        shape = (2, FORWARD_OUTPUT_BYTES // (2 * itemsize))   # fewer than 16 rows: split
        probe = slice(1, 2)                                  # one row alone: half the bytes
    x = (rng.standard_normal(shape) + 5.0).astype(dtype)
    weight, bias = random_params(rng, shape[1:], dtype)
    expected = ln.layer_norm(x[probe], -1, weight, bias)
    with use_threads(2):
        fresh = ln.layer_norm(x, -1, weight, bias)
        assert fresh[probe].tobytes() == expected.tobytes()
        if rows_kind != "split rows":
            unstreamed = in_unstreamed_calls(shape[0], lambda part: ln.layer_norm(x[part], -1, weight, bias))
            assert fresh.tobytes() == unstreamed.tobytes()
        # y not on a 64-byte line; the last one on a 32-byte vector boundary
        # (a whole AVX2 vector), half a line in
        for offset in (1, 3, 32 // itemsize):
            out = empty_off_a_line(shape, dtype, offset)
            ln.layer_norm(x, -1, weight, bias, out=out)
            assert out.tobytes() == fresh.tobytes(), f"output offset {offset} changed the bits"
        rms = ln.rms_norm(x, -1, weight, eps=1e-6)
        assert rms[probe].tobytes() == ln.rms_norm(x[probe], -1, weight, eps=1e-6).tobytes()
        if rows_kind != "split rows":
            unstreamed = in_unstreamed_calls(shape[0], lambda part: ln.rms_norm(x[part], -1, weight, eps=1e-6))
            assert rms.tobytes() == unstreamed.tobytes()
        in_place = x.copy()
        ln.layer_norm(in_place, -1, weight, bias, out=in_place)
        assert in_place.tobytes() == fresh.tobytes(), "in place (x is y) changed the bits"
    with use_threads(1):
        assert ln.layer_norm(x, -1, weight, bias).tobytes() == fresh.tobytes()


def in_unstreamed_calls(rows, call):
    """call(part) on slices of a quarter of the rows each, calls whose arrays
    take under 32 MB, so that none is streamed or staged; their outputs
    concatenated."""
    step = -(-rows // 4)
    parts = [call(slice(i, i + step)) for i in range(0, rows, step)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(outputs) for outputs in zip(*parts))
    return np.concatenate(parts)


def backward_at_two_threads(rng, shape, dtype):
    """A backward call of the given shape at 2 threads, checked to give the
    same bits at 1 thread: its inputs (x, dy, mean, rstd, weight) and outputs
    (dx, dweight, dbias)."""
    x = (rng.standard_normal(shape) + 5.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = random_params(rng, shape[1:], dtype)[0]
    _, mean, rstd = ln.layer_norm(x, -1, weight, return_stats=True)
    with use_threads(2):
        grads = ln.layer_norm_backward(dy, x, mean, rstd, -1, weight)
    with use_threads(1):
        again = ln.layer_norm_backward(dy, x, mean, rstd, -1, weight)
    for a, b in zip(grads, again):
        assert a.tobytes() == b.tobytes(), "1 and 2 threads differ"
    return (x, dy, mean, rstd, weight), grads


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("rows_kind", ["row blocks", "short rows", "long rows"])
def test_streamed_backward_has_the_bits_of_small_calls(simd, rng, dtype, rows_kind):
    """dx of 11 MB (with x and dy 33 MB) comes from the (64-byte aligned)
    buffer pool and is streamed."""
    cols = {"row blocks": 4096, "short rows": 64, "long rows": 131072}[rows_kind]
    shape = (BACKWARD_OUTPUT_BYTES // (cols * np.dtype(dtype).itemsize), cols)
    (x, dy, mean, rstd, weight), (dx, _, _) = backward_at_two_threads(rng, shape, dtype)
    assert dx.ctypes.data % 64 == 0, "large outputs should come from the aligned pool"
    small = ln.layer_norm_backward(dy[:3], x[:3], mean[:3], rstd[:3], -1, weight)[0]
    assert dx[:3].tobytes() == small.tobytes()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_streamed_strided_backward_has_the_bits_of_small_calls(simd, rng, dtype):
    """Over the middle axis of (outer, 64, 4096), dx of 11 MB is streamed: the
    bits of a call on two outer slices, and the same at 1 and 2 threads."""
    shape = (BACKWARD_OUTPUT_BYTES // (64 * 4096 * np.dtype(dtype).itemsize) + 1, 64, 4096)
    x = (rng.standard_normal(shape) + 5.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = random_params(rng, (64,), dtype)[0]
    _, mean, rstd = ln.layer_norm(x, 1, weight, return_stats=True)
    with use_threads(2):
        grads = ln.layer_norm_backward(dy, x, mean, rstd, 1, weight)
    with use_threads(1):
        again = ln.layer_norm_backward(dy, x, mean, rstd, 1, weight)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(grads, again)), "1 and 2 threads differ"
    assert grads[0].ctypes.data % 64 == 0, "large outputs should come from the aligned pool"
    small = ln.layer_norm_backward(dy[:2], x[:2], mean[:2], rstd[:2], 1, weight)[0]
    assert grads[0][:2].tobytes() == small.tobytes()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("cols", [4096, 128, 64, "split rows"])
def test_streamed_fused_add_has_the_bits_of_small_calls(simd, rng, dtype, cols):
    """The fused add streams its sum too.  The row kernels recompute
    x + residual instead of reading the sum back, which in place
    (sum_out=residual or x) they cannot; the long-row split takes each block's
    statistics from x + residual before streaming the block's sum, and reads
    the sum back for y."""
    itemsize = np.dtype(dtype).itemsize
    if cols == "split rows":
        shape = (2, FUSED_ADD_OUTPUT_BYTES // (2 * itemsize))   # fewer than 16 rows: split
        probe = slice(1, 2)                                  # one row alone: half the bytes
    else:
        shape = (FUSED_ADD_OUTPUT_BYTES // (cols * itemsize), cols)
        probe = slice(0, 3)
    x = rng.standard_normal(shape).astype(dtype)
    r = (rng.standard_normal(shape) + 3.0).astype(dtype)
    weight, bias = random_params(rng, shape[1:], dtype)
    small_y, small_s = ln.add_layer_norm(x[probe], r[probe], -1, weight, bias)
    small_rms = ln.add_rms_norm(x[probe], r[probe], -1, weight, eps=1e-6)[0]
    with use_threads(2):
        y, s = ln.add_layer_norm(x, r, -1, weight, bias)
        assert y[probe].tobytes() == small_y.tobytes() and s[probe].tobytes() == small_s.tobytes()
        if cols != "split rows":
            unstreamed_y, unstreamed_s = in_unstreamed_calls(
                shape[0], lambda part: ln.add_layer_norm(x[part], r[part], -1, weight, bias))
            assert y.tobytes() == unstreamed_y.tobytes() and s.tobytes() == unstreamed_s.tobytes()
        assert ln.add_rms_norm(x, r, -1, weight, eps=1e-6)[0][probe].tobytes() == small_rms.tobytes()
        out, sum_out = empty_off_a_line(shape, dtype, 1), empty_off_a_line(shape, dtype, 5)
        ln.add_layer_norm(x, r, -1, weight, bias, out=out, sum_out=sum_out)
        assert out.tobytes() == y.tobytes() and sum_out.tobytes() == s.tobytes()
        residual = r.copy()
        in_place_y, _ = ln.add_layer_norm(x, residual, -1, weight, bias, sum_out=residual)
        assert residual.tobytes() == s.tobytes() and in_place_y.tobytes() == y.tobytes()
        on_x = x.copy()
        on_x_y, _ = ln.add_layer_norm(on_x, r, -1, weight, bias, sum_out=on_x)
        assert on_x.tobytes() == s.tobytes() and on_x_y.tobytes() == y.tobytes()
    with use_threads(1):
        assert ln.add_layer_norm(x, r, -1, weight, bias)[0].tobytes() == y.tobytes()


def test_streamed_parameter_gradients_of_one_long_row(simd, rng):
    """One row of 8M float32 values: dweight and dbias (32 MB each, written
    once) are streamed.  With a single row, dbias is dy itself and dweight is
    dy * xhat, and the bits do not depend on the thread count."""
    shape = (1, STREAMED_BYTES // 4)
    (x, dy, mean, rstd, _), (_, dweight, dbias) = backward_at_two_threads(rng, shape, FLOAT32)
    assert dweight.ctypes.data % 64 == 0 and dbias.ctypes.data % 64 == 0
    assert dbias.tobytes() == dy[0].tobytes()
    xhat = (x[0].astype(np.float64) - mean[0, 0]) * rstd[0, 0]
    np.testing.assert_allclose(dweight, dy[0] * xhat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_streamed_strided_fused_add_has_the_bits_of_small_calls(simd, rng, dtype):
    """Over the middle axis, the fused add counts its four arrays: sums of
    8 MB are streamed (where the level streams them), with the bits of a call on two outer
    slices, in place on the residual too."""
    shape = (FUSED_ADD_OUTPUT_BYTES // (64 * 4096 * np.dtype(dtype).itemsize), 64, 4096)
    x = (rng.standard_normal(shape) + 5.0).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    weight, bias = random_params(rng, (64,), dtype)
    small_y, small_s = ln.add_layer_norm(x[:2], r[:2], 1, weight, bias)
    small_rms, _ = ln.add_rms_norm(x[:2], r[:2], 1, weight, eps=1e-6)
    with use_threads(2):
        y, s = ln.add_layer_norm(x, r, 1, weight, bias)
        assert y[:2].tobytes() == small_y.tobytes() and s[:2].tobytes() == small_s.tobytes()
        assert ln.add_rms_norm(x, r, 1, weight, eps=1e-6)[0][:2].tobytes() == small_rms.tobytes()
        residual = r.copy()
        in_place_y, _ = ln.add_layer_norm(x, residual, 1, weight, bias, sum_out=residual)
        assert residual.tobytes() == s.tobytes() and in_place_y.tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_streamed_strided_outputs_have_the_bits_of_small_calls(simd, rng, dtype):
    """Over the middle axis of (outer, 64, 4096), outputs of 16 MB and more are
    streamed, the fused add's sum too (then x + residual is recomputed): the
    same bits as a call on two outer slices, for any alignment and in place."""
    shape = ((16 << 20) // (64 * 4096 * np.dtype(dtype).itemsize), 64, 4096)
    x = (rng.standard_normal(shape) + 5.0).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    weight, bias = random_params(rng, (64,), dtype)
    small_y = ln.layer_norm(x[:2], 1, weight, bias)
    small_rms = ln.rms_norm(x[:2], 1, weight, eps=1e-6)
    small_add_y, small_add_s = ln.add_layer_norm(x[:2], r[:2], 1, weight, bias)
    with use_threads(2):
        y = ln.layer_norm(x, 1, weight, bias)
        assert y[:2].tobytes() == small_y.tobytes()
        assert ln.rms_norm(x, 1, weight, eps=1e-6)[:2].tobytes() == small_rms.tobytes()
        # off a line, the columns start at y's first line (numpy.empty's
        # large arrays are 16 bytes off one): the positions before it go alone
        for offset in (1, 4):
            out = empty_off_a_line(shape, dtype, offset)
            ln.layer_norm(x, 1, weight, bias, out=out)
            assert out.tobytes() == y.tobytes(), f"an output {offset} items off a line changed the bits"
            in_place = empty_off_a_line(shape, dtype, offset)
            in_place[...] = x
            ln.layer_norm(in_place, 1, weight, bias, out=in_place)
            assert in_place.tobytes() == y.tobytes(), "in place (x is y) changed the bits"
        add_y, add_s = ln.add_layer_norm(x, r, 1, weight, bias)
        assert add_y[:2].tobytes() == small_add_y.tobytes() and add_s[:2].tobytes() == small_add_s.tobytes()
        for y_offset, s_offset in ((4, 4), (1, 4)):
            out, sum_out = empty_off_a_line(shape, dtype, y_offset), empty_off_a_line(shape, dtype, s_offset)
            ln.add_layer_norm(x, r, 1, weight, bias, out=out, sum_out=sum_out)
            assert out.tobytes() == add_y.tobytes() and sum_out.tobytes() == add_s.tobytes()
        residual = r.copy()
        in_place_y, _ = ln.add_layer_norm(x, residual, 1, weight, bias, sum_out=residual)
        assert residual.tobytes() == add_s.tobytes() and in_place_y.tobytes() == add_y.tobytes()
    with use_threads(1):
        assert ln.layer_norm(x, 1, weight, bias).tobytes() == y.tobytes()
