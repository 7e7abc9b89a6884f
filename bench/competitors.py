"""One adapter per implementation under test.

Each adapter turns a :class:`cases.CaseData` into zero-argument callables (the
timed code) for the operations it supports.  A callable returns its output (an
array, a tensor, or a tuple/list whose first element is the normalized output)
so the runner can check it against the float64 reference once before timing.
Anything set up outside the callable (tensors wrapping the NumPy buffers,
ONNX sessions, preallocated outputs, autograd graphs) is not timed.

An adapter whose package is not installed is unavailable (``.error`` says
why); a method that cannot handle a case raises :class:`Skip`.  Both end up in
the report's skipped list instead of stopping the run.
"""
import numpy as np

from cases import EPS, RMS_EPS


class Skip(Exception):
    """This implementation cannot run this case; the message says why."""


class Adapter:
    key = ""
    name = ""

    def __init__(self):
        self.error = None

    @property
    def available(self):
        return self.error is None

    def version(self):
        return ""

    def set_threads(self, n):
        pass

    def release(self):
        """Drop per-case caches (sessions, buffers)."""

    def as_numpy(self, obj):
        return np.asarray(obj)


class LayerNormLib(Adapter):
    """The package under test, ``import layernorm as ln`` (required)."""
    key = "layernorm"
    name = "layernorm"

    def __init__(self, module):
        super().__init__()
        self.ln = module
        self._limits = None

    def version(self):
        return getattr(self.ln, "__version__", "?")

    def set_threads(self, n):
        if hasattr(self.ln, "set_num_threads"):
            self.ln.set_num_threads(n)
            return
        try:    # fallback while set_num_threads does not exist yet
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        self._limits = threadpool_limits(n, user_api="openmp")

    def _f(self, name):
        f = getattr(self.ln, name, None)
        if f is None:
            raise Skip(f"layernorm.{name} does not exist")
        return f

    def forward(self, d, dtype="float32", out=False, stats=False):
        f = self._f("layer_norm")
        x, w, b = d.get("x", dtype), d.get("w", dtype), d.get("b", dtype)
        ax = d.case.axis_arg
        if out:
            y = np.empty_like(x)
            return lambda: f(x, ax, w, b, EPS, out=y)
        if stats:
            return lambda: f(x, ax, w, b, EPS, return_stats=True)
        return lambda: f(x, ax, w, b, EPS)

    def backward(self, d):
        f = self._f("layer_norm_backward")
        x, dy, w = d.x, d.dy, d.w
        mean, rstd = d.stats
        ax = d.case.axis_arg
        return lambda: f(dy, x, mean, rstd, ax, w)

    def rms(self, d, dtype="float32", out=False):
        f = self._f("rms_norm")
        x, w = d.get("x", dtype), d.get("w", dtype)
        ax = d.case.axis_arg
        if out:
            y = np.empty_like(x)
            return lambda: f(x, ax, w, RMS_EPS, out=y)
        return lambda: f(x, ax, w, RMS_EPS)

    def add(self, d, rms=False, fused=True, out=False):
        """Fused ``add_*_norm``, or the unfused pair ``x + r`` then ``*_norm``."""
        x, r, w, b = d.x, d.r, d.w, d.b
        ax = d.case.axis_arg
        if fused:
            f = self._f("add_rms_norm" if rms else "add_layer_norm")
            if out:
                y, s = np.empty_like(x), np.empty_like(x)
                if rms:
                    return lambda: f(x, r, ax, w, RMS_EPS, out=y, sum_out=s)
                return lambda: f(x, r, ax, w, b, EPS, out=y, sum_out=s)
            if rms:
                return lambda: f(x, r, ax, w, RMS_EPS)
            return lambda: f(x, r, ax, w, b, EPS)
        norm = self._f("rms_norm" if rms else "layer_norm")
        args = (ax, w, RMS_EPS) if rms else (ax, w, b, EPS)
        if out:
            y, s = np.empty_like(x), np.empty_like(x)
            add = np.add

            def pair_out():
                add(x, r, out=s)
                return norm(s, *args, out=y)
            return pair_out
        return lambda: norm(x + r, *args)

    def layer_object(self, d, kind):
        """A built layer object called on x ('LayerNorm', 'LayerNormalization')."""
        c = d.case
        cls = self._f(kind)
        if kind == "LayerNorm":
            layer = cls(c.norm_shape[0] if len(c.norm_shape) == 1 else c.norm_shape)
        else:
            layer = cls(axis=c.axis_arg)
        x = d.x
        layer(x)    # builds the layer (Keras style creates weights on first call)
        return lambda: layer(x)


class NumPyLib(Adapter):
    """NumPy formula: x.mean / x.var then (x - mean) / sqrt(var + eps) * w + b."""
    key = "numpy"
    name = "NumPy"

    def version(self):
        return np.__version__

    def forward(self, d, dtype="float32"):
        c = d.case
        x = d.get("x", dtype)
        w = d.get("w", dtype).reshape(c.param_broadcast_shape())
        b = d.get("b", dtype).reshape(c.param_broadcast_shape())
        ax = c.axes

        def fn():
            mean = x.mean(axis=ax, keepdims=True)
            var = x.var(axis=ax, keepdims=True)
            return (x - mean) / np.sqrt(var + EPS) * w + b
        return fn


class CopyLib(Adapter):
    """numpy.copyto(dst, x) into a preallocated dst: the memory-bandwidth yardstick."""
    key = "copy"
    name = "numpy.copyto"

    def version(self):
        return np.__version__

    def copy(self, d, dtype="float32"):
        x = d.get("x", dtype)
        dst = np.empty_like(x)
        copyto = np.copyto
        return lambda: copyto(dst, x)


class TorchLib(Adapter):
    """PyTorch CPU: torch.nn.functional on tensors sharing the NumPy buffers."""
    key = "torch"
    name = "PyTorch"

    def __init__(self):
        super().__init__()
        try:
            import torch
            import torch.nn.functional as F
        except Exception as e:   # ImportError, or a broken install
            self.error = f"torch not importable ({type(e).__name__}: {e})"
            return
        self.torch, self.F = torch, F

    def version(self):
        return self.torch.__version__

    def set_threads(self, n):
        self.torch.set_num_threads(n)

    def tensor(self, a):
        if a.dtype.name == "bfloat16":
            return self.torch.from_numpy(a.view(np.int16)).view(self.torch.bfloat16)
        return self.torch.from_numpy(a)

    def as_numpy(self, t):
        if not isinstance(t, self.torch.Tensor):
            return np.asarray(t)
        t = t.detach()
        if t.dtype == self.torch.bfloat16:
            import ml_dtypes
            return t.view(self.torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def _layout(self, c, norm):
        """Apply ``norm`` (which normalizes trailing dims) to the case's axes.

        Non-trailing axes (NCHW axis=1): permute so they are last, make it
        contiguous (F.layer_norm needs it), normalize, permute back and make the
        result contiguous again, so the output has x's layout like the others.
        """
        if c.trailing:
            return norm
        p, ip = c.perm, c.inverse_perm
        return lambda t: norm(t.permute(p).contiguous()).permute(ip).contiguous()

    def forward(self, d, dtype="float32"):
        F, c = self.F, d.case
        x = self.tensor(d.get("x", dtype))
        w, b = self.tensor(d.get("w", dtype)), self.tensor(d.get("b", dtype))
        ns = c.norm_shape
        if c.trailing:
            layer_norm = F.layer_norm
            return lambda: layer_norm(x, ns, w, b, EPS)
        call = self._layout(c, lambda t: F.layer_norm(t, ns, w, b, EPS))
        return lambda: call(x)

    def rms(self, d, dtype="float32"):
        F, c = self.F, d.case
        if not hasattr(F, "rms_norm"):
            raise Skip(f"torch {self.torch.__version__} has no F.rms_norm")
        x, w = self.tensor(d.get("x", dtype)), self.tensor(d.get("w", dtype))
        ns = c.norm_shape
        if c.trailing:
            rms_norm = F.rms_norm
            return lambda: rms_norm(x, ns, w, RMS_EPS)
        call = self._layout(c, lambda t: F.rms_norm(t, ns, w, RMS_EPS))
        return lambda: call(x)

    def add(self, d, rms=False):
        """Unfused ``x + r`` then F.layer_norm / F.rms_norm (PyTorch has no fused op)."""
        F, c = self.F, d.case
        if rms and not hasattr(F, "rms_norm"):
            raise Skip(f"torch {self.torch.__version__} has no F.rms_norm")
        x, r = self.tensor(d.x), self.tensor(d.r)
        w, b = self.tensor(d.w), self.tensor(d.b)
        ns = c.norm_shape
        if rms:
            call = self._layout(c, lambda t: F.rms_norm(t, ns, w, RMS_EPS))
        else:
            call = self._layout(c, lambda t: F.layer_norm(t, ns, w, b, EPS))
        return lambda: call(x + r)

    def backward(self, d):
        """Autograd backward only: the graph is built once, outside the timed call.

        The timed call is ``torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)``:
        it runs the recorded backward (LayerNormBackward, plus permute/copy
        backward on the NCHW path) and returns fresh dx, dweight, dbias, with
        no accumulation into ``.grad``.
        """
        torch, F, c = self.torch, self.F, d.case
        ns = c.norm_shape
        with torch.enable_grad():
            x = self.tensor(d.x).requires_grad_()
            w = self.tensor(d.w).requires_grad_()
            b = self.tensor(d.b).requires_grad_()
            y = self._layout(c, lambda t: F.layer_norm(t, ns, w, b, EPS))(x)
        dy = self.tensor(d.dy)
        inputs = (x, w, b)
        grad = torch.autograd.grad
        return lambda: grad(y, inputs, dy, retain_graph=True)


class OnnxRuntimeLib(Adapter):
    """ONNX Runtime CPU: single-node models built in memory with ``onnx.helper``.

    Sessions: CPUExecutionProvider, intra_op_num_threads = the thread count,
    inter_op_num_threads = 1, sequential execution, default graph optimizations
    and default CPU memory arena.  Weight and bias are initializers (constants),
    as in an exported model.  Trailing-axis cases feed a zero-copy (rows, cols)
    view and normalize its last axis; other axis sets wrap the op in two
    Transpose nodes (ONNX's normalization ops only normalize trailing axes).

    ``out=False``: ``session.run(None, feeds)`` (ORT allocates the output).
    ``out=True``: IO binding, input and output bound to preallocated NumPy
    buffers, ``session.run_with_iobinding(binding)``.
    """
    key = "onnxruntime"
    name = "ONNX Runtime"

    def __init__(self):
        super().__init__()
        try:
            import onnxruntime as ort
            import onnx
            from onnx import helper, numpy_helper
        except Exception as e:
            self.error = f"onnxruntime/onnx not importable ({type(e).__name__}: {e})"
            return
        self.ort, self.onnx, self.helper, self.numpy_helper = ort, onnx, helper, numpy_helper
        self.threads = 1
        self._sessions = {}
        self._rms_op = None

    def version(self):
        return f"{self.ort.__version__} (onnx {self.onnx.__version__})"

    def set_threads(self, n):
        self.threads = n

    def release(self):
        self._sessions.clear()

    # -- model building ---------------------------------------------------
    def _model_bytes(self, nodes, inputs, outputs, inits, opsets):
        h = self.helper
        graph = h.make_graph(nodes, "bench", inputs, outputs, initializer=inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid(dom, v) for dom, v in opsets])
        model.ir_version = min(model.ir_version, 10)
        return model.SerializeToString()

    def _session_from_bytes(self, model_bytes):
        ort = self.ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    def rms_op(self):
        """'RMSNormalization' (opset 23) when this onnxruntime runs it, else the
        contrib 'SimplifiedLayerNormalization'."""
        if self._rms_op is None:
            self._rms_op = "SimplifiedLayerNormalization"
            try:
                h, T = self.helper, self.onnx.TensorProto.FLOAT
                node = h.make_node("RMSNormalization", ["X", "W"], ["Y"], axis=-1, epsilon=RMS_EPS)
                mb = self._model_bytes([node], [h.make_tensor_value_info("X", T, [2, 4])],
                                       [h.make_tensor_value_info("Y", T, [2, 4])],
                                       [self.numpy_helper.from_array(np.ones(4, np.float32), "W")],
                                       [("", 23)])
                self._session_from_bytes(mb).run(None, {"X": np.ones((2, 4), np.float32)})
                self._rms_op = "RMSNormalization"
            except Exception:
                pass
        return self._rms_op

    def _session(self, kind, d, dtype):
        """(session, input names, output names, ONNX-side shape) for one op."""
        c = d.case
        key = (kind, c, dtype, self.threads)
        if key in self._sessions:
            return self._sessions[key]
        h, nh = self.helper, self.numpy_helper
        T = h.np_dtype_to_tensor_dtype(np.dtype(d.get("x", dtype).dtype))
        if c.trailing:
            shape, axis, pshape = [c.rows, c.cols], -1, (c.cols,)
        else:
            shape, axis, pshape = list(c.shape), -len(c.axes), c.norm_shape
        inits = [nh.from_array(d.get("w", dtype).reshape(pshape), "W")]
        if kind in ("layer_norm", "add_layer_norm"):
            inits.append(nh.from_array(d.get("b", dtype).reshape(pshape), "B"))
        inputs, outputs, nodes = ["X"], ["Y"], []
        src = "X"
        if not c.trailing:
            if kind.startswith("add_"):
                raise Skip("Skip*LayerNormalization normalizes the last axis only "
                           "(would need 4 Transposes)")
            nodes.append(h.make_node("Transpose", ["X"], ["Xt"], perm=list(c.perm)))
            src = "Xt"
        dst = "Y" if c.trailing else "Yt"
        if kind == "layer_norm":
            nodes.append(h.make_node("LayerNormalization", [src, "W", "B"], [dst],
                                     axis=axis, epsilon=EPS))
            opsets = [("", 17)]
        elif kind == "rms_norm":
            op = self.rms_op()
            nodes.append(h.make_node(op, [src, "W"], [dst], axis=axis, epsilon=RMS_EPS))
            opsets = [("", 23 if op == "RMSNormalization" else 17)]
        elif kind in ("add_layer_norm", "add_rms_norm"):
            inputs.append("R")
            outputs.append("S")
            if kind == "add_layer_norm":
                nodes.append(h.make_node("SkipLayerNormalization", ["X", "R", "W", "B"],
                                         ["Y", "", "", "S"], domain="com.microsoft", epsilon=EPS))
            else:
                nodes.append(h.make_node("SkipSimplifiedLayerNormalization", ["X", "R", "W"],
                                         ["Y", "", "", "S"], domain="com.microsoft",
                                         epsilon=RMS_EPS))
            opsets = [("", 17), ("com.microsoft", 1)]
        else:
            raise ValueError(kind)
        if not c.trailing:
            nodes.append(h.make_node("Transpose", [dst], ["Y"], perm=list(c.inverse_perm)))
        vi = lambda n: h.make_tensor_value_info(n, T, shape)
        mb = self._model_bytes(nodes, [vi(n) for n in inputs], [vi(n) for n in outputs],
                               inits, opsets)
        entry = (self._session_from_bytes(mb), inputs, outputs, shape)
        self._sessions[key] = entry
        return entry

    def _callable(self, kind, d, dtype, out, arrays):
        sess, inputs, outputs, shape = self._session(kind, d, dtype)
        feeds = {n: d.get(a, dtype).reshape(shape) for n, a in zip(inputs, arrays)}
        if not out:
            run = sess.run
            return lambda: run(None, feeds)
        binding = sess.io_binding()
        for n, a in feeds.items():
            binding.bind_cpu_input(n, a)
        bufs = []
        for n in outputs:
            buf = np.empty(shape, dtype=feeds["X"].dtype)
            binding.bind_output(n, "cpu", 0, buf.dtype.type, list(buf.shape), buf.ctypes.data)
            bufs.append(buf)
        run = sess.run_with_iobinding

        def fn():
            run(binding)
            return bufs
        return fn

    def forward(self, d, dtype="float32", out=False):
        if dtype == "bfloat16":
            raise Skip("ONNX Runtime CPU has no bfloat16 LayerNormalization kernel")
        return self._callable("layer_norm", d, dtype, out, ["x"])

    def rms(self, d, dtype="float32", out=False):
        return self._callable("rms_norm", d, dtype, out, ["x"])

    def add(self, d, rms=False, out=False):
        return self._callable("add_rms_norm" if rms else "add_layer_norm", d, "float32", out,
                              ["x", "r"])


def load_adapters(ln_module):
    """All adapters, keyed by ``Adapter.key`` (unavailable ones carry ``.error``)."""
    adapters = [LayerNormLib(ln_module), NumPyLib(), CopyLib(), TorchLib(), OnnxRuntimeLib()]
    return {a.key: a for a in adapters}
