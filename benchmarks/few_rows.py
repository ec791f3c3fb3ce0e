"""MatMul time for n = 1..8 activation rows against one row, per format, in process CPU time
(1 thread: nothing spins, so CPU time is the work done and holds on a machine whose cores other
jobs take). A speculative verify step multiplies every matrix by 1 + k rows; this says what
each extra row costs per format.

    PYTHONPATH=python .venv/bin/python benchmarks/few_rows.py --json benchmarks/results/few_rows.json
    ... --cores main=build/base branch=build/dev   (one fresh process per build, alternating)

Shapes: the default model's f32 head (49152 x 576, 113 MB: beyond the 32 MiB L3), a
32768 x 2048 int4 matrix (37 MB), a 32768 x 8192 ternary matrix (67 MB). Median of 5
repetitions of 10 calls each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPES = {"f32": (49152, 576), "int4": (32768, 2048), "ternary": (32768, 8192)}
ROWS = [1, 2, 3, 4, 5, 8]


def measure(fmt) -> dict:
    import ternlm
    rows, cols = SHAPES[fmt]
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    q = ternlm.quantize(w, fmt)
    del w
    res = {n: [] for n in ROWS}
    for _ in range(5):
        for n in ROWS:
            x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
            ternlm.matmul(x, q, threads=1)
            t0 = time.process_time()
            for _ in range(10):
                ternlm.matmul(x, q, threads=1)
            res[n].append((time.process_time() - t0) / 10)
    one = float(np.median(res[1]))
    return {"shape": [rows, cols], "cpu_ms": {n: 1e3 * float(np.median(v)) for n, v in res.items()},
            "x_one_row": {n: float(np.median(v)) / one for n, v in res.items()},
            "load_average_1min": os.getloadavg()[0]}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", nargs="+", default=list(SHAPES))
    ap.add_argument("--cores", nargs="+", default=None, metavar="LABEL=DIR")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        with open(args.worker, "w") as f:
            json.dump({fmt: measure(fmt) for fmt in args.formats}, f)
        return
    builds = [c.split("=", 1) for c in args.cores] if args.cores else [["this", os.environ.get("TERNLM_CORE_DIR", "")]]
    out = {}
    for label, core in builds:
        with tempfile.TemporaryDirectory(prefix="ternlm-few-rows-") as tmp:
            path = os.path.join(tmp, "r.json")
            env = dict(os.environ, **({"TERNLM_CORE_DIR": os.path.abspath(core)} if core else {}))
            subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", path, "--formats", *args.formats],
                           env=env, check=True)
            with open(path) as f:
                out[label] = json.load(f)
    lines = ["| format | build | " + " | ".join(f"{n} rows" for n in ROWS) + " |", "|---|---|" + "---|" * len(ROWS)]
    for fmt in args.formats:
        for label in out:
            r = out[label][fmt]
            lines.append(f"| {fmt} {r['shape'][0]}x{r['shape'][1]} | {label} | " +
                         " | ".join(f"{r['x_one_row'][str(n)] if str(n) in r['x_one_row'] else r['x_one_row'][n]:.2f}x"
                                    for n in ROWS) + " |")
    text = "\n".join(lines)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "benchmarks/few_rows.py " + " ".join(argv), "results": out, "table": text}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
