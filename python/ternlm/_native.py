"""Imports the compiled core. TERNLM_CORE_DIR (a CMake build folder holding
_core*.so) overrides the installed module, for development builds."""
import glob
import importlib.util
import os
import sys

_dev = os.environ.get("TERNLM_CORE_DIR")
if _dev:
    _found = sorted(glob.glob(os.path.join(_dev, "_core*.so")))
    if not _found:
        raise ImportError(f"TERNLM_CORE_DIR={_dev!r} holds no _core*.so")
    _spec = importlib.util.spec_from_file_location("ternlm._core", _found[0])
    _core = importlib.util.module_from_spec(_spec)
    sys.modules["ternlm._core"] = _core
    _spec.loader.exec_module(_core)
else:
    from . import _core  # noqa: F401

core = sys.modules["ternlm._core"]


def _apply_prefetch_env(environ=os.environ):
    """TERNLM_PREFETCH=<bytes> sets the kernels' software prefetch distance (0: off;
    default 4096 on Intel CPUs with AVX-512, 0 elsewhere: see cpp/runtime/targets.h)."""
    value = environ.get("TERNLM_PREFETCH")
    if value is None or value.strip() == "":
        return
    try:
        n = int(value.strip())
    except ValueError:
        n = -1
    if n < 0 or n % 64 or n > (1 << 20):
        raise ValueError(f"TERNLM_PREFETCH={value!r}: expected a number of bytes, a multiple of 64 "
                         f"from 0 (off) to {1 << 20}")
    core.set_prefetch_distance(n)


def _apply_amx_env(environ=os.environ):
    """TERNLM_AMX=0 keeps Intel AMX out of the ternary and INT4 prefill kernels (1, the
    default where the CPU has it, allows it): for comparisons, see cpp/kernels/amx_x86.h."""
    value = environ.get("TERNLM_AMX")
    if value is None or value.strip() == "":
        return
    if value.strip() not in ("0", "1"):
        raise ValueError(f"TERNLM_AMX={value!r}: expected 0 (off) or 1 (on where the CPU has AMX)")
    core.set_amx(value.strip() == "1")


_apply_prefetch_env()
_apply_amx_env()
