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
