"""`ternlm serve --ray`: replicas x threads per replica, under the same concurrent load, on loopback.

    PYTHONPATH=python .venv/bin/python benchmarks/ray_serve.py [--model PATH] [--grid 1x2,2x1]
        [--plain] [--clients 8] [--requests 32] [--max-tokens 64] [--max-sequences 8] [--rounds 2] [--json OUT]

--grid lists the configurations as REPLICASxTHREADS (2x1: two replicas of one thread each).
Ray starts on this machine (as many logical CPUs as the largest configuration needs, no
dashboard); each configuration is deployed as ternlm.ray.app(...) behind Serve's proxy on
127.0.0.1, and the same fixed list of streamed greedy chat completions (serve_load.py's
requests, one user message each) is sent by --clients threads until it is empty. --plain
adds `ternlm serve` without Ray (one process, the largest thread count of the grid) as a
baseline. Rounds interleave: round 1 runs every configuration once, then round 2 again, so
each configuration's rows share the machine's state with the others'. Deploying is not
timed. Per row: requests/s, aggregate completion tok/s, time to first token p50/p95, and
whether every request completed. Bounded: a fixed number of requests, every socket with a
timeout, loopback only. Decode is memory-bandwidth bound: replicas beat threads where one
process's threads cannot use the socket's bandwidth (small models, many cores); on few
cores, threads and replicas share the same cores.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import one_request, run_level  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_grid(text):
    grid = []
    for item in text.split(","):
        r, _, t = item.strip().partition("x")
        if not (r.isdigit() and t.isdigit() and int(r) >= 1 and int(t) >= 1):
            raise SystemExit(f"--grid: {item!r} is not REPLICASxTHREADS (e.g. 2x1)")
        grid.append((int(r), int(t)))
    return grid


def wait_ready(port, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ttft, _, tokens, ok = one_request(port, 10_000, 4, 30)
        if ok:
            return
        time.sleep(0.5)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port}")


def start_plain(args, threads):
    cmd = [sys.executable, "-m", "ternlm.server", "--port", "0", "--log-level", "warning", "--threads", str(threads),
           "--max-sequences", str(args.max_sequences), "--context", str(args.context), "--model", args.model]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "OpenAI API at" not in line:
        proc.kill()
        raise SystemExit(f"ternlm serve did not start: {line}{proc.stderr.read()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: ternlm's default model")
    p.add_argument("--grid", default="1x2,2x1", help="REPLICASxTHREADS,... (default: 1x2,2x1)")
    p.add_argument("--plain", action="store_true", help="also `ternlm serve` without Ray (baseline)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--requests", type=int, default=32, help="requests per row (default: 32)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (default: 64)")
    p.add_argument("--max-sequences", type=int, default=8, help="per replica (default: 8)")
    p.add_argument("--context", type=int, default=1024, help="(default: 1024)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the grid (default: 2)")
    p.add_argument("--json", default=None, help="write the rows here (e.g. benchmarks/results/ray_serve.json)")
    args = p.parse_args(argv)
    grid = parse_grid(args.grid)
    if args.model is None:
        from ternlm.default_model import default_model_path
        args.model = default_model_path()
    args.model = os.path.abspath(args.model)

    import ternlm.ray
    ray = ternlm.ray.init(num_cpus=max(r * t for r, t in grid), logging_level="WARNING", log_to_driver=False)
    from ray import serve
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING"})
    plain = start_plain(args, max(t for _, t in grid)) if args.plain else None
    configs = ([("plain", 1, max(t for _, t in grid))] if plain else []) + [("ray", r, t) for r, t in grid]
    rows = []
    try:
        for rnd in range(args.rounds):
            for kind, replicas, threads in configs:
                if kind == "ray":
                    # the previous configuration's replicas go first: they hold the CPUs these need
                    serve.delete("bench")
                    serve.run(ternlm.ray.app(args.model, replicas=replicas, threads=threads,
                                             max_sequences=args.max_sequences, context=args.context, name="m"),
                              name="bench", route_prefix="/", blocking=False)
                    target = port
                else:
                    target = plain[1]
                wait_ready(target)
                row = {"path": kind, "round": rnd + 1, "replicas": replicas, "threads_per_replica": threads,
                       **run_level(lambda i: one_request(target, i, args.max_tokens, 600), args.clients, args.requests)}
                rows.append(row)
                print(f"round {rnd + 1} {kind:5s} {replicas}x{threads}: {row['requests_per_s']:6.2f} req/s "
                      f"{row['aggregate_tok_s']:7.1f} tok/s  TTFT p50 {row['ttft_p50_s'] * 1e3:7.1f} ms  "
                      f"completed {row['completed']}/{row['requests']}", file=sys.stderr, flush=True)
    finally:
        if plain:
            plain[0].send_signal(2)
            try:
                plain[0].wait(60)
            except subprocess.TimeoutExpired:
                plain[0].kill()
        serve.shutdown()
        ray.shutdown()
    print("| path | round | replicas x threads | completed | req/s | aggregate tok/s | TTFT p50 (ms) | TTFT p95 (ms) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['path']} | {r['round']} | {r['replicas']}x{r['threads_per_replica']} | {r['completed']}/"
              f"{r['requests']} | {r['requests_per_s']:.2f} | {r['aggregate_tok_s']:.1f} | "
              f"{r['ttft_p50_s'] * 1e3:.0f} | {r['ttft_p95_s'] * 1e3:.0f} |")
    if args.json:
        from ternlm.bench import machine_info
        report = {"command": "benchmarks/ray_serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "model": os.path.basename(args.model), "clients": args.clients, "max_tokens": args.max_tokens,
                  "max_sequences_per_replica": args.max_sequences, "context": args.context,
                  "ray": ray.__version__, "machine": machine_info(), "rows": rows}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if all(r["completed"] == r["requests"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
