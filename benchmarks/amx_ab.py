"""Ternary and INT4 prefill matmuls with and without Intel AMX, interleaved in one process.

    PYTHONPATH=python python benchmarks/amx_ab.py [--threads 1,16] [--rows 128]

For each 2B-4T-shaped matrix (6912 x 2560, 2560 x 6912; ternary, and INT4 with groups of
32) times `--rows` activation rows:
best of 5 calls per round, 3 rounds alternating _core.set_amx(False / True); asserts the two
paths' outputs are identical and prints ms and GMAC/s. On a CPU without AMX it says so and
exits (both settings would run the same vpdpbusd / pmaddubsw kernel).
"""
import argparse
import sys
import time

import numpy as np

import ternlm
from ternlm import _core


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,16", help="comma separated thread counts")
    ap.add_argument("--rows", type=int, default=128, help="activation rows (prefill tokens)")
    args = ap.parse_args(argv)
    if not _core.amx():
        print(f"no AMX on this CPU (target {_core.current_target()}): nothing to compare")
        return 0
    rng = np.random.default_rng(0)
    for fmt, rows, cols in (("ternary", 6912, 2560), ("ternary", 2560, 6912), ("int4", 6912, 2560),
                            ("int4", 2560, 6912)):
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        q = ternlm.quantize(w, fmt)
        del w
        x = rng.standard_normal((args.rows, cols)).astype(np.float32)
        for threads in (int(t) for t in args.threads.split(",")):
            best, out = {False: [], True: []}, {}
            try:
                for _ in range(3):
                    for amx in (False, True):
                        _core.set_amx(amx)
                        times = []
                        for _ in range(5):
                            t0 = time.perf_counter()
                            out[amx] = ternlm.matmul(x, q, threads=threads)
                            times.append(time.perf_counter() - t0)
                        best[amx].append(min(times))
            finally:
                _core.set_amx(True)
            assert np.array_equal(out[False], out[True]), "AMX and vpdpbusd outputs differ"
            macs = rows * cols * args.rows
            off, on = min(best[False]), min(best[True])
            print(f"{fmt} {rows}x{cols} n={args.rows} threads {threads}: without AMX {off * 1e3:.2f} ms "
                  f"({macs / off / 1e9:.0f} GMAC/s), with AMX {on * 1e3:.2f} ms ({macs / on / 1e9:.0f} GMAC/s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
