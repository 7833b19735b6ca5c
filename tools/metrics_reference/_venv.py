"""Run the calling script inside tools/.venv-metrics with the pinned reference packages.

Every reference script imports this first: it creates the venv on first use, installs the
pinned versions, and re-executes the script with the venv's Python. On CPUs with AVX-512,
numpy's SIMD `log` differs from glibc's in the last bit for a few arguments (9170, 19143,
...), so those features are switched off: the fixtures then match glibc, which is what
Rust's `f64::ln` calls, on any x86-64 machine.
"""

import os
import subprocess
import sys

PINS = ["pycocoevalcap==1.2", "numpy==2.4.6"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(ROOT, "tools", ".venv-metrics")
AVX512_FEATURES = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR X86_V4"


def _has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def ensure():
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", *PINS])
    env = dict(os.environ)
    if _has_avx512():
        env["NPY_DISABLE_CPU_FEATURES"] = AVX512_FEATURES
    os.execve(py, [py, *sys.argv], env)


def versions():
    """Versions of everything that can change a reference number."""
    import importlib.metadata as md
    import platform

    import numpy

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pycocoevalcap": md.version("pycocoevalcap"),
        "java": java[0] if java else "missing",
        "numpy_disabled_cpu_features": os.environ.get("NPY_DISABLE_CPU_FEATURES", ""),
    }


def pycocoevalcap_dir():
    import pycocoevalcap

    # A namespace package: `__file__` is None, `__path__` is not.
    return list(pycocoevalcap.__path__)[0]
