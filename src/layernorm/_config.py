"""Build and run-time configuration report."""
import platform

import numpy as np

from . import _kernels, _dtypes
from ._threads import get_num_threads


def config():
    """The configuration as a dict."""
    from . import __version__
    return {
        "version": __version__,
        "simd_level": _kernels.simd_level(),
        "simd_levels_available": _kernels.simd_levels_available(),
        "openmp": _kernels.openmp_enabled(),
        "num_threads": get_num_threads(),
        "bfloat16": _dtypes.bfloat16_installed(),
        "bfloat16_instructions": _kernels.bf16_instructions_in_use(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }


def show_config():
    """Print the build and run-time configuration; return it as a dict."""
    cfg = config()
    print(f"layernorm {cfg['version']}")
    print(f"  SIMD level in use : {cfg['simd_level']} "
          f"(available: {', '.join(cfg['simd_levels_available'])}; force with LAYERNORM_SIMD)")
    print(f"  OpenMP            : {'yes' if cfg['openmp'] else 'no (serial build)'}, "
          f"{cfg['num_threads']} thread(s) (LAYERNORM_NUM_THREADS / set_num_threads)")
    print(f"  bfloat16          : {'yes (ml_dtypes)' if cfg['bfloat16'] else 'no (pip install ml_dtypes)'}"
          f"{', rounded by AVX512-BF16' if cfg['bfloat16'] and cfg['bfloat16_instructions'] else ''}")
    print(f"  numpy {cfg['numpy']} on {cfg['machine']}")
    return cfg
