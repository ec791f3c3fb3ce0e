"""ternlm.matmul against numpy float32 (x @ W.T, numpy's BLAS) at the BitNet b1.58 2B-4T
shapes, GEMV (n = 1) and GEMM (n = 64). Prints a table and writes JSON.

    TERNLM_CORE_DIR=build/kernels PYTHONPATH=python .venv/bin/python benchmarks/bench_matmul.py \
        --threads 2 --json bench_matmul.json

Each timing is the median of --repeat calls after one warm-up call. weight_GB/s counts the
stored bytes of the matrix (QuantizedMatrix.nbytes; numpy: 4 bytes per weight) once per call.
"""
import argparse
import json
import platform
import time

import numpy as np

import ternlm

SHAPES = [(2560, 2560), (2560, 640), (2560, 6912), (6912, 2560), (2560, 128256)]  # (in, out)


def median_seconds(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="ternary,int4,bf16")
    ap.add_argument("--n", default="1,64", help="activation rows, comma separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--shapes", default="all", help="'all' or e.g. 2560x6912,6912x2560 (in x out)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()

    shapes = SHAPES if args.shapes == "all" else [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    ns = [int(v) for v in args.n.split(",")]
    rng = np.random.default_rng(0)
    results = []
    print(f"{'format':8} {'in->out':>13} {'n':>3} {'ternlm us':>10} {'numpy us':>10} {'speedup':>8} {'weight GB/s':>11} {'GMAC/s':>7}")
    for cols, rows in shapes:
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        for n in ns:
            x = rng.standard_normal((n, cols), dtype=np.float32)
            x_in = x[0] if n == 1 else x
            t_np = median_seconds(lambda: x_in @ w.T, args.repeat)
            for fmt in args.formats.split(","):
                q = ternlm.quantize(w, fmt)
                t = median_seconds(lambda: ternlm.matmul(x_in, q, threads=args.threads), args.repeat)
                r = dict(format=fmt, in_features=cols, out_features=rows, n=n, threads=args.threads,
                         ternlm_us=t * 1e6, numpy_f32_us=t_np * 1e6, speedup_vs_numpy=t_np / t,
                         weight_bytes=q.nbytes, weight_GBps=q.nbytes / t / 1e9,
                         GMACps=rows * cols * n / t / 1e9)
                results.append(r)
                print(f"{fmt:8} {cols:>6}->{rows:<6} {n:>3} {r['ternlm_us']:10.1f} {r['numpy_f32_us']:10.1f} "
                      f"{r['speedup_vs_numpy']:8.2f} {r['weight_GBps']:11.2f} {r['GMACps']:7.1f}")
                del q
        del w
    meta = dict(machine=platform.machine(), processor=platform.processor(), numpy=np.__version__,
                threads=args.threads, targets=ternlm._core.supported_targets(),
                target=ternlm._core.current_target())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
