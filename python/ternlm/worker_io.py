"""The request/result protocol of ternlm's measuring subprocesses (`ternlm compare`'s
per-format worker, benchmarks/bench_worker.py): the parent writes REQUEST.json, the child
runs one function on it and writes RESULT.json — the function's dict, or
{"error": type name, "message": ..., "traceback": ...} when it raised. Pure Python with no
import of the C++ core, so a worker measuring another engine can load this file alone."""
from __future__ import annotations

import json
import sys
import traceback


def run_worker(argv, usage: str, handle) -> int:
    """argv = [REQUEST.json, RESULT.json]; result = handle(request dict). Exit status: 0 when
    handle returned, 1 when it raised (reported in RESULT.json), 2 on a usage error."""
    if len(argv) != 2:
        print(f"usage: {usage} REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        request = json.load(f)
    try:
        result, code = handle(request), 0
    except Exception as e:  # reported to the parent, which names the run it belongs to
        result = {"error": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}
        code = 1
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return code
