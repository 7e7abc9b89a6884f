"""Build the layernorm extension: C kernels + Cython bindings.

The kernels in src/kernels/ are templates compiled once per (SIMD level,
dtype); only those objects get -mavx2/-mavx512* flags, the dispatcher is
built for the baseline and picks a level at run time.  OpenMP is probed with
a tiny program: without it the package builds serially with a warning.
Set LAYERNORM_BUILD_SIMD=baseline to build the portable kernels only.
"""
import os
import platform
import shutil
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_TEMPLATES = [
    "src/kernels/forward_rows.c",
    "src/kernels/forward_strided.c",
    "src/kernels/backward_rows.c",
    "src/kernels/backward_strided.c",
]
DTYPES = {"f32": 0, "f64": 1, "f16": 2, "bf16": 3}
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# level name -> (vector bytes, extra flags)
SIMD_LEVELS = {
    "baseline": (16, []),
    "avx2": (32, ["-mavx2", "-mfma", "-mf16c"]),
    "avx512": (64, ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]),
}
# bfloat16 at the AVX-512 level, built a second time with AVX512-BF16's
# conversion instruction (dispatch.c takes it when the CPU has it).
BF16_VARIANT = "avx512bf16"
BF16_VARIANT_FLAGS = SIMD_LEVELS["avx512"][1] + ["-mavx512bf16"]
# -ffp-contract=off: the compiler never fuses a * b + c on its own; the
# kernels' multiply-adds are fused where they say so (vmuladd, smuladd in
# kernel_common.h).  With GNU C's default (fast), whether an expression was
# fused depended on how the compiler inlined and laid out the code around it,
# so two copies of one expression could round differently: a copy of the row
# body specialized on the row length moved float64 rows of 64 by an ulp, the
# strided kernel's columns and leftover positions disagreed (5fed30e).  Every
# hot multiply-add is written out, so the speed is unchanged (A/B, AVX-512,
# 2 threads: backward (4096, 768) 0.96x the time, NCHW forward 0.96x,
# backward 0.94x; in cache float64 (256, 768) 1.00x, float32 (16, 8192)
# 0.92x; AVX2 backward (128, 768) in cache 1.03x).
# LOOP_ALIGN_FLAGS (where the compiler takes them): every loop of the
# extension starts on a 64-byte line, so that a change elsewhere in a unit
# does not move the hot loops against the lines.  On an Intel Xeon host the
# same instructions of the baseline normalize loop took 1.15x the time after
# f6f9643 moved them (a change that did not touch the baseline's code); with
# every loop aligned, A/B against unaligned (in cache, 1 thread): baseline
# (64, 768) 0.88x the time, backward (20, 500) 0.94x at AVX-512 and 0.97x at
# AVX2, float32, float16, bfloat16 forward, RMS norm and the fused add 0.99x
# to 1.02x; 2 threads, (4096, 768), (262144, 64) float16, NCHW, backward
# 1.00x.  The same bits.  (setup.py changes do not relink an in-place
# build: rebuild with build_ext --inplace --force.)
LOOP_ALIGN_FLAGS = ["-falign-loops=64"]
COMMON_FLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
                "-Wno-psabi"]
# The kernels are vectorized by hand, but the compiler's loop vectorizer also
# takes some scalar loops (row tails, few columns, per-row finishes) and may
# version them on the pointers' runtime overlap or alignment: the vector and
# scalar versions contract multiply-adds differently, so a call's last bits
# depended on where its arrays happened to be (seen on a (5, 7) float32
# dweight).  The first of these that the compiler takes: GCC keeps the
# vectorizer but without runtime versioning or alignment peeling (switching
# the vectorizer off made (262144, 64) 1.2x slower); other compilers get no
# loop vectorizer.
DETERMINISM_FLAG_CHOICES = [
    ["--param=vect-max-version-for-alias-checks=0", "--param=vect-max-version-for-alignment-checks=0",
     "--param=vect-max-peeling-for-alignment=0"],
    ["-fno-vectorize"],
    ["-fno-tree-loop-vectorize"],
]

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
  n += 1;
  return n > 0 ? 0 : 1; }
"""
SIMD_PROBES = {
    "avx2": r"""
#include <immintrin.h>
int main(void) { __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(1), _mm256_set1_ps(2), _mm256_cvtph_ps(_mm_set1_epi16(0)));
                 return _mm256_cvtss_f32(a) > 0; }
""",
    "avx512": r"""
#include <immintrin.h>
int main(void) { __m512 a = _mm512_cvtph_ps(_mm256_set1_epi16(0));
                 return _mm512_reduce_add_ps(a) > 0; }
""",
    BF16_VARIANT: r"""
#include <immintrin.h>
int main(void) { __m256bh a = _mm512_cvtneps_pbh(_mm512_set1_ps(1));
                 return _mm256_extract_epi16((__m256i)a, 0) != 0; }
""",
}


def compiles(compiler, source, flags, link=False):
    """True if `source` compiles (and links) with `flags`."""
    tmp = tempfile.mkdtemp(prefix="layernorm-probe-")
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        objects = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
        if link:
            compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class build_ext_with_kernels(build_ext):
    """Compiles the kernel templates per (SIMD level, dtype) and links them in."""

    def build_extensions(self):
        compiler = self.compiler
        openmp = [] if os.environ.get("LAYERNORM_NO_OPENMP") else ["-fopenmp"]
        if openmp and not compiles(compiler, OPENMP_PROBE, openmp, link=True):
            warnings.warn("layernorm: the compiler has no OpenMP; building single-threaded kernels")
            openmp = []
        levels = ["baseline"]
        if IS_X86_64 and os.environ.get("LAYERNORM_BUILD_SIMD", "all") != "baseline":
            for level in ("avx2", "avx512"):
                if compiles(compiler, SIMD_PROBES[level], COMMON_FLAGS + SIMD_LEVELS[level][1]):
                    levels.append(level)
                else:
                    warnings.warn(f"layernorm: the compiler cannot build {level} kernels; skipping them")
        variants = []
        if "avx512" in levels and compiles(compiler, SIMD_PROBES[BF16_VARIANT], COMMON_FLAGS + BF16_VARIANT_FLAGS):
            variants.append(BF16_VARIANT)
        trivial = "int main(void) { return 0; }"
        self.determinism_flags = next(
            (flags for flags in DETERMINISM_FLAG_CHOICES
             if compiles(compiler, trivial, COMMON_FLAGS + flags + ["-Werror"])), [])
        aligns_loops = compiles(compiler, trivial, COMMON_FLAGS + LOOP_ALIGN_FLAGS + ["-Werror"])
        self.loop_align_flags = LOOP_ALIGN_FLAGS if aligns_loops else []
        if not self.determinism_flags:
            warnings.warn("layernorm: cannot keep the loop vectorizer from versioning loops; "
                          "last bits may depend on array addresses")
        print(f"layernorm: OpenMP {'on' if openmp else 'off'}; SIMD levels built: {', '.join(levels)}"
              f"{' (bfloat16 also with AVX512-BF16)' if variants else ''}; "
              f"vectorizer flags: {' '.join(self.determinism_flags)}; "
              f"loops: {' '.join(self.loop_align_flags) or 'unaligned'}")
        level_macros = [(f"LN_BUILD_{level.upper()}", "1") for level in levels + variants if level != "baseline"]
        for ext in self.extensions:
            if ext.name != "layernorm._kernels":
                continue
            ext.extra_objects += self.compile_kernels(ext, levels, variants, openmp)
            ext.define_macros += level_macros
            ext.extra_compile_args += COMMON_FLAGS + self.loop_align_flags + openmp
            ext.extra_link_args += openmp
        super().build_extensions()

    def compile_kernels(self, ext, levels, variants, openmp):
        """One object per (template, level, dtype), and per template for the
        bfloat16 variant, compiled in parallel."""

        def compile_one(job):
            level, dtype = job
            vector_bytes, flags = (64, BF16_VARIANT_FLAGS) if level == BF16_VARIANT else SIMD_LEVELS[level]
            macros = [("LN_DT", str(DTYPES[dtype])), ("LN_DT_NAME", dtype), ("LN_ISA_NAME", level),
                      ("LN_VECTOR_BYTES", str(vector_bytes))]
            return self.compiler.compile(
                KERNEL_TEMPLATES,
                output_dir=os.path.join(self.build_temp, "kernels", level, dtype),
                macros=macros,
                include_dirs=ext.include_dirs,
                extra_postargs=COMMON_FLAGS + self.determinism_flags + self.loop_align_flags + flags + openmp,
                depends=ext.depends,
            )

        jobs = [(level, dtype) for level in levels for dtype in DTYPES] + [(variant, "bf16") for variant in variants]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return [obj for objects in pool.map(compile_one, jobs) for obj in objects]


def extensions():
    headers = [os.path.join("include/layernorm", h) for h in os.listdir("include/layernorm")]
    numpy_api = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    return [
        Extension(
            "layernorm._kernels",
            sources=["src/layernorm/_kernels.pyx", "src/kernels/dispatch.c"],
            include_dirs=["include", numpy.get_include()],
            define_macros=numpy_api,
            depends=headers + KERNEL_TEMPLATES,
        ),
        Extension(
            "layernorm._buffer_pool",
            sources=["src/layernorm/_buffer_pool.pyx"],
            include_dirs=[numpy.get_include()],
            define_macros=numpy_api,
            extra_compile_args=["-O2"],
        ),
    ]


if sys.platform == "win32":
    raise SystemExit("layernorm builds with GCC or Clang (vector extensions); MSVC is not supported")

setup(
    ext_modules=cythonize(
        extensions(),
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    ),
    cmdclass={"build_ext": build_ext_with_kernels},
)
