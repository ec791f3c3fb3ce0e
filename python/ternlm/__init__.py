"""ternlm: run LLMs on the CPU in BF16, INT4 and ternary (BitNet b1.58) weights."""
from ._native import core as _core  # noqa: F401

__version__ = "0.1.0"
from .formats import (  # noqa: E402,F401
    QuantizedMatrix, concat_rows, from_bf16, from_int4, from_nano, from_q6, from_ternary, get_num_threads, matmul,
    pack_ternary, quantize, quantize_bf16, set_num_threads, unpack_ternary,
)
from .model import Model, load  # noqa: E402,F401
from .generation import Session  # noqa: E402,F401
from .sequences import SequencesBusyError  # noqa: E402,F401
from .speculative import Lookup  # noqa: E402,F401
from . import bandwidth, nano, texts  # noqa: E402,F401
from .compare import compare  # noqa: E402,F401  (the function; the module is ternlm.compare in sys.modules)
from .compare.table import ComparisonTable  # noqa: E402,F401
from .distill import distill  # noqa: E402,F401  (the function; torch is imported only when it runs)
