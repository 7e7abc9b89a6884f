"""What is compared: one :class:`Section` per table of the report.

A section lists its cases, the implementations timed side by side on each case
(one :class:`Impl` per column: adapter + method + arguments), how many bytes an
implementation moves, and the ratios/differences the report derives from the
medians of the same run.  Every ratio ``A/B`` is a time ratio t(A) / t(B):
for "competitor/layernorm" columns, above 1 means layernorm is faster; for
"layernorm/copy", at most 1 means layernorm runs at memory-copy speed.
"""
from dataclasses import dataclass, field

from cases import FORWARD_CASES, SMALL_CASES, LAYERS_CASES, dtype_of


@dataclass(frozen=True)
class Impl:
    key: str                 # unique within its section
    label: str               # column header
    lib: str                 # adapter key (competitors.py)
    method: str              # adapter method building the timed callable
    kwargs: tuple = ()       # extra (name, value) arguments of the method
    dtype: str = "float32"   # dtype of x (bytes and reference)
    arrays: int = 0          # arrays of x's size read + written (0: the section's)
    params: int = -1         # arrays of weight's size read + written (-1: the section's)
    check: str = ""          # reference kind (reference.py), "" for none
    includes: str = ""       # what the timed call includes (for the report)


@dataclass
class Section:
    key: str                 # unique name, used in the JSON
    op: str                  # the --ops group it belongs to
    title: str
    cases: list
    impls: list
    arrays: int = 2          # default traffic: read x + write y
    params: int = 0          # default weight-sized traffic (weight, bias, their grads)
    ratios: list = field(default_factory=list)   # (label, numerator key, denominator key)
    diffs: list = field(default_factory=list)    # (label, key a, key b): t(a) - t(b) in us
    micro: bool = False      # report microseconds, no GB/s
    about: str = ""
    every_thread_count: bool = False   # False: only the largest --threads value
                                       # (unless --all-threads)

    def impl(self, key):
        return next(i for i in self.impls if i.key == key)

    def bytes_moved(self, impl, case):
        return (impl.arrays or self.arrays) * case.size * dtype_of(impl.dtype).itemsize

    def least_bytes(self, impl, case):
        """The fewest bytes the call can move: each x-sized array once, plus the
        weight-sized ones (which matter for one long row: (1, 16777216)'s weight
        and bias are as large as x)."""
        params = self.params if impl.params < 0 else impl.params
        return self.bytes_moved(impl, case) + params * case.cols * dtype_of(impl.dtype).itemsize


# What the timed calls include, shared by several sections.
_LN = "ln.layer_norm(x, axis, w, b, eps): validation + output allocation + kernel"
_LN_OUT = "same with out=y preallocated (no allocation)"
_ORT = "session.run(None, {X: x}): ORT allocates the output (default CPU arena)"
_ORT_OUT = "IO binding, input and output bound to preallocated NumPy buffers"
_TORCH = ("F.layer_norm on torch.from_numpy(x) (zero-copy), allocates the output; "
          "non-trailing axes: permute + contiguous + layer_norm + permute + contiguous")
_COPY = "numpy.copyto(dst, x), dst preallocated, one thread: the bandwidth yardstick"


def _forward():
    impls = [
        Impl("copy", "copy", "copy", "copy", params=0, includes=_COPY),
        Impl("ln", "layernorm", "layernorm", "forward", check="layer_norm", includes=_LN),
        Impl("ln_out", "layernorm out=", "layernorm", "forward", (("out", True),),
             check="layer_norm", includes=_LN_OUT),
        Impl("ort", "ORT", "onnxruntime", "forward", check="layer_norm",
             includes="LayerNormalization (opset 17); " + _ORT),
        Impl("ort_out", "ORT io-bound", "onnxruntime", "forward", (("out", True),),
             check="layer_norm", includes=_ORT_OUT),
        Impl("torch", "PyTorch", "torch", "forward", check="layer_norm", includes=_TORCH),
        Impl("numpy", "NumPy", "numpy", "forward", check="layer_norm",
             includes="x.mean, x.var, (x - mean) / sqrt(var + eps) * w + b (float32, one thread)"),
    ]
    return Section(
        "forward", "forward", "Forward layer_norm, float32", FORWARD_CASES, impls, params=2,
        ratios=[("ln/copy", "ln", "copy"), ("ln out=/copy", "ln_out", "copy"),
                ("ORT/ln", "ort", "ln"), ("ORT io/ln out=", "ort_out", "ln_out"),
                ("PyTorch/ln", "torch", "ln"), ("NumPy/ln", "numpy", "ln")],
        every_thread_count=True,
        about="GB/s = (read x + write y) bytes / median time. Weight and bias on.")


def _backward():
    impls = [
        Impl("ln_fwd", "layernorm fwd+stats", "layernorm", "forward", (("stats", True),),
             arrays=2, params=2, check="layer_norm",
             includes="ln.layer_norm(..., return_stats=True), allocating y, mean, rstd"),
        Impl("ln", "layernorm bwd", "layernorm", "backward", check="layer_norm_backward",
             includes="ln.layer_norm_backward(dy, x, mean, rstd, axis, w): allocates dx, dw, db"),
        Impl("torch", "PyTorch autograd", "torch", "backward", check="layer_norm_backward",
             includes=("torch.autograd.grad(y, (x, w, b), dy, retain_graph=True) on a graph "
                       "built once outside the timing: backward only, fresh dx, dw, db")),
    ]
    return Section(
        "backward", "backward", "Backward layer_norm_backward, float32", FORWARD_CASES, impls,
        arrays=3, params=3,   # reads w, writes dw and db
        ratios=[("PyTorch/ln", "torch", "ln"), ("ln bwd/fwd", "ln", "ln_fwd")],
        about="GB/s = (read x, dy + write dx) bytes / median time; the forward row "
              "counts read x + write y.")


def _rms():
    impls = [
        Impl("ln", "layernorm", "layernorm", "rms", check="rms_norm",
             includes="ln.rms_norm(x, axis, w, eps): allocates the output"),
        Impl("ln_out", "layernorm out=", "layernorm", "rms", (("out", True),),
             check="rms_norm", includes=_LN_OUT),
        Impl("ort", "ORT", "onnxruntime", "rms", check="rms_norm",
             includes="RMSNormalization (opset 23) or SimplifiedLayerNormalization; " + _ORT),
        Impl("ort_out", "ORT io-bound", "onnxruntime", "rms", (("out", True),),
             check="rms_norm", includes=_ORT_OUT),
        Impl("torch", "PyTorch", "torch", "rms", check="rms_norm",
             includes="F.rms_norm(x, shape, w, eps), allocates; NCHW via permutes"),
    ]
    return Section(
        "rms", "rms", "rms_norm, float32", FORWARD_CASES, impls, params=1,
        ratios=[("PyTorch/ln", "torch", "ln"), ("ORT/ln", "ort", "ln"),
                ("ORT io/ln out=", "ort_out", "ln_out")],
        about="GB/s = (read x + write y) bytes / median time. eps = 1e-6 for all.")


def _add(rms):
    fn = "add_rms_norm" if rms else "add_layer_norm"
    norm = "rms_norm" if rms else "layer_norm"
    skip_op = "SkipSimplifiedLayerNormalization" if rms else "SkipLayerNormalization"
    torch_norm = "F.rms_norm" if rms else "F.layer_norm"
    kw = (("rms", rms),)
    impls = [
        Impl("ln", f"ln.{fn}", "layernorm", "add", kw, check=fn,
             includes=f"ln.{fn}(x, r, ...): one pass, allocates y and s"),
        Impl("ln_out", f"ln.{fn} out=", "layernorm", "add", kw + (("out", True),), check=fn,
             includes="same with out=y, sum_out=s preallocated"),
        Impl("pair", f"x+r, ln.{norm}", "layernorm", "add", kw + (("fused", False),), check=fn,
             includes=f"s = x + r; ln.{norm}(s, ...): unfused, allocates s and y"),
        Impl("pair_out", f"x+r, ln.{norm} out=", "layernorm", "add",
             kw + (("fused", False), ("out", True)), check=fn,
             includes=f"np.add(x, r, out=s); ln.{norm}(s, ..., out=y)"),
        Impl("torch", f"PyTorch x+r, {torch_norm}", "torch", "add", kw, check=fn,
             includes=f"{torch_norm}(x + r, ...): unfused, allocates"),
        Impl("ort", f"ORT {skip_op}", "onnxruntime", "add", kw, check=fn,
             includes=f"com.microsoft {skip_op}, outputs y and s; " + _ORT),
        Impl("ort_out", "ORT io-bound", "onnxruntime", "add", kw + (("out", True),), check=fn,
             includes=f"{skip_op} with " + _ORT_OUT),
    ]
    return Section(
        "add_rms" if rms else "add", "add", f"Fused residual add: {fn}, float32",
        FORWARD_CASES, impls, arrays=4, params=1 if rms else 2,
        ratios=[("pair/fused", "pair", "ln"), ("pair out=/fused out=", "pair_out", "ln_out"),
                ("PyTorch/ln", "torch", "ln"), ("ORT/ln", "ort", "ln"),
                ("ORT io/ln out=", "ort_out", "ln_out")],
        about="GB/s = (read x, r + write y, s) bytes / median time, for every column "
              "(the unfused pairs move more bytes than that).")


def _half():
    impls = [
        Impl("ln32", "layernorm f32", "layernorm", "forward", check="layer_norm", includes=_LN),
        Impl("ln16", "layernorm f16", "layernorm", "forward", (("dtype", "float16"),),
             dtype="float16", check="layer_norm", includes=_LN + "; float16 x, w, b"),
        Impl("lnbf", "layernorm bf16", "layernorm", "forward", (("dtype", "bfloat16"),),
             dtype="bfloat16", check="layer_norm",
             includes=_LN + "; ml_dtypes.bfloat16 x, w, b"),
        Impl("torch16", "PyTorch f16", "torch", "forward", (("dtype", "float16"),),
             dtype="float16", check="layer_norm", includes=_TORCH),
        Impl("torchbf", "PyTorch bf16", "torch", "forward", (("dtype", "bfloat16"),),
             dtype="bfloat16", check="layer_norm", includes=_TORCH),
        Impl("ort16", "ORT f16", "onnxruntime", "forward", (("dtype", "float16"),),
             dtype="float16", check="layer_norm", includes="LayerNormalization; " + _ORT),
    ]
    return Section(
        "half", "half", "Half precision layer_norm (float16, bfloat16)", FORWARD_CASES, impls,
        params=2,
        ratios=[("f32/f16 (ln)", "ln32", "ln16"), ("f32/bf16 (ln)", "ln32", "lnbf"),
                ("PyTorch f16/ln f16", "torch16", "ln16"),
                ("PyTorch bf16/ln bf16", "torchbf", "lnbf"),
                ("ORT f16/ln f16", "ort16", "ln16")],
        about="f32/f16 is the element-throughput gain of half precision over float32 "
              "(same element count). GB/s uses each column's own item size.")


def _small():
    f = _forward()
    keep = ("ln", "ln_out", "torch", "ort", "ort_out", "numpy")
    impls = [i for k in keep for i in f.impls if i.key == k]
    return Section(
        "small", "small", "Small calls, float32 (microseconds)", SMALL_CASES, impls,
        ratios=[("PyTorch/ln", "torch", "ln"), ("ORT/ln", "ort", "ln"),
                ("NumPy/ln", "numpy", "ln")],
        micro=True, every_thread_count=True,
        about="Median per-call time of back-to-back calls (tiny calls timed in batches).")


def _layers():
    impls = [
        Impl("fn", "ln.layer_norm", "layernorm", "forward", includes=_LN),
        Impl("module", "ln.LayerNorm(16)", "layernorm", "layer_object",
             (("kind", "LayerNorm"),), includes="built PyTorch-style module, m(x)"),
        Impl("keras", "ln.LayerNormalization()", "layernorm", "layer_object",
             (("kind", "LayerNormalization"),), includes="built Keras-style layer, layer(x)"),
    ]
    return Section(
        "layers", "layers", "Layer objects vs the array function, (8, 16) float32 "
        "(microseconds)", LAYERS_CASES, impls,
        ratios=[("LayerNorm/fn", "module", "fn"), ("LayerNormalization/fn", "keras", "fn")],
        diffs=[("LayerNorm overhead", "module", "fn"),
               ("LayerNormalization overhead", "keras", "fn")],
        micro=True, every_thread_count=True,
        about="Overhead = t(layer call) - t(ln.layer_norm), in microseconds.")


OPS = ("forward", "backward", "rms", "add", "half", "small", "layers")


def all_sections():
    return [_forward(), _backward(), _rms(), _add(False), _add(True), _half(), _small(),
            _layers()]


def select(ops):
    ops = set(ops)
    unknown = ops - set(OPS)
    if unknown:
        raise SystemExit(f"unknown --ops {sorted(unknown)}; choose from {', '.join(OPS)}")
    return [s for s in all_sections() if s.op in ops]
