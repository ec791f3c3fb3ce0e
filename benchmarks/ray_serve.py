"""`ternlm serve --ray`: replicas x threads per replica, under the same concurrent load, on loopback.

    PYTHONPATH=python .venv/bin/python benchmarks/ray_serve.py [--model PATH] [--grid 1x2,2x1]
        [--plain] [--clients 8] [--requests 32] [--max-tokens 64] [--max-sequences 8] [--rounds 2]
        [--modes stream,whole | --no-stream] [--coalesce on,off] [--max-ongoing N,...] [--json OUT]

--grid lists the configurations as REPLICASxTHREADS (2x1: two replicas of one thread each).
Ray starts on this machine (as many logical CPUs as the largest configuration needs, no
dashboard); each configuration is deployed as ternlm.ray.app(...) behind Serve's proxy on
127.0.0.1, and the same fixed list of streamed greedy chat completions (serve_load.py's
requests, one user message each) is sent by --clients threads until it is empty. --plain
adds `ternlm serve` without Ray (one process, the largest thread count of the grid) as a
baseline. Rounds interleave: round 1 runs every configuration once, then round 2 again, so
each configuration's rows share the machine's state with the others'. Deploying is not
timed. Per row: requests/s, aggregate completion tok/s, time to first token p50/p95,
whether every request completed, and the CPU time the serving processes spent per
completion token (ms/token: Serve's replicas and its proxy, or the plain server), read from
/proc through psutil before and after the row. --modes stream,whole sends each
configuration's requests streamed and then answered whole (one JSON body: no per-token
messages), so the two rows show what streaming itself costs; --no-stream is --modes whole.
--coalesce on,off runs every configuration twice, once as shipped (the events of a stream
that are ready together leave as one body chunk) and once with one chunk per event
(TERNLM_SSE_COALESCE=0 in the server's or the replicas' environment): the same bytes, a
before/after in one run. --max-ongoing 8,16 runs each Ray configuration with each
max_ongoing_requests (the requests a replica holds; beyond --max-sequences they wait
inside it for a free sequence, the others in Serve's queue).
Bounded: a fixed number of requests, every socket with a timeout, loopback only. Decode is
memory-bandwidth bound: replicas beat threads where one process's threads cannot use the
socket's bandwidth (small models, many cores); on few cores, threads and replicas share the
same cores.
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
from serve_load import ms, one_request, run_level  # noqa: E402

MODES = ("stream", "whole")


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


def start_plain(args, threads, coalesce):
    cmd = [sys.executable, "-m", "ternlm.server", "--port", "0", "--log-level", "warning", "--threads", str(threads),
           "--max-sequences", str(args.max_sequences), "--context", str(args.context), "--model", args.model]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, **coalesce_env(coalesce)})
    line = proc.stderr.readline()
    if "OpenAI API at" not in line:
        proc.kill()
        raise SystemExit(f"ternlm serve did not start: {line}{proc.stderr.read()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])


def coalesce_env(coalesce: str) -> dict:
    """The server's environment for --coalesce on / off (ternlm/server/app.py, _body)."""
    return {"TERNLM_SSE_COALESCE": "1" if coalesce == "on" else "0"}


def serving_processes(kind, plain):
    """{role: [psutil.Process]} of the processes that serve a row: the plain server, or
    Serve's replicas of the benchmark's application and its HTTP proxy (Ray titles an
    actor's process after its class: ray::ServeReplica:bench:ternlm, ray::ProxyActor)."""
    import psutil
    if kind == "plain":
        return {"server": [psutil.Process(plain[0].pid)]}
    roles = {"replicas": [], "proxy": []}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "ServeReplica:bench:" in cmd:
            roles["replicas"].append(p)
        elif "ProxyActor" in cmd:
            roles["proxy"].append(p)
    return roles


def cpu_seconds(roles) -> dict:
    """User + system CPU seconds so far of each role's processes (summed)."""
    import psutil
    out = {}
    for role, procs in roles.items():
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        out[role] = total
    return out


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
    p.add_argument("--max-ongoing", default=None, metavar="N[,N...]",
                   help="Serve's max_ongoing_requests per replica; several: every Ray configuration with each "
                        "(default: ternlm.ray.app's, twice --max-sequences)")
    p.add_argument("--modes", default="stream", help="stream, whole or both (stream,whole): requests streamed "
                                                       "and/or answered whole, one row each (default: stream)")
    p.add_argument("--no-stream", action="store_true", help="whole answers only (--modes whole)")
    p.add_argument("--coalesce", default="on", help="on, off or both (on,off): a streamed answer's events that are "
                                                    "ready together go out as one body chunk (on) or each as its "
                                                    "own (off); both: every configuration both ways (default: on)")
    p.add_argument("--json", default=None, help="write the rows here (e.g. benchmarks/results/ray_serve.json)")
    args = p.parse_args(argv)
    grid = parse_grid(args.grid)
    modes = ["whole"] if args.no_stream else [m.strip() for m in args.modes.split(",")]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: {args.modes!r} is not a list of {' and '.join(MODES)}")
    ongoing = [int(x) for x in args.max_ongoing.split(",")] if args.max_ongoing else [None]
    coalescing = [c.strip() for c in args.coalesce.split(",")]
    if not coalescing or any(c not in ("on", "off") for c in coalescing):
        raise SystemExit(f"--coalesce: {args.coalesce!r} is not a list of on and off")
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
    plain = {c: start_plain(args, max(t for _, t in grid), c) for c in coalescing} if args.plain else {}
    configs = (([("plain", 1, max(t for _, t in grid), None)] if plain else []) +
               [("ray", r, t, o) for r, t in grid for o in ongoing])
    rows = []
    try:
        for rnd in range(args.rounds):
            for (kind, replicas, threads, max_ongoing), coalesce in ((c, o) for c in configs for o in coalescing):
                if kind == "ray":
                    # the previous configuration's replicas go first: they hold the CPUs these need
                    serve.delete("bench")
                    serve.run(ternlm.ray.app(args.model, replicas=replicas, threads=threads,
                                             max_sequences=args.max_sequences, max_ongoing_requests=max_ongoing,
                                             context=args.context, name="m",
                                             runtime_env={"env_vars": coalesce_env(coalesce)}),
                              name="bench", route_prefix="/", blocking=False)
                    target = port
                else:
                    target = plain[coalesce][1]
                wait_ready(target)
                roles = serving_processes(kind, plain.get(coalesce))
                # a whole answer is one body: coalescing changes nothing there
                for mode in modes if coalesce == coalescing[0] else [m for m in modes if m == "stream"]:
                    stream = mode == "stream"
                    before = cpu_seconds(roles)
                    level = run_level(lambda i: one_request(target, i, args.max_tokens, 600, stream), args.clients,
                                      args.requests)
                    after = cpu_seconds(roles)
                    tokens = max(level["completion_tokens"], 1)
                    row = {"path": kind, "mode": mode, "coalesce": coalesce if stream else None, "round": rnd + 1,
                           "replicas": replicas, "threads_per_replica": threads, "max_ongoing": max_ongoing, **level,
                           "cpu_s": {r: after[r] - before[r] for r in roles},
                           "cpu_ms_per_token": {r: (after[r] - before[r]) * 1e3 / tokens for r in roles}}
                    rows.append(row)
                    cpu = "  ".join(f"{r} {v:.2f}" for r, v in row["cpu_ms_per_token"].items())
                    print(f"round {rnd + 1} {kind:5s} {replicas}x{threads} ongoing {max_ongoing or '-'} {mode:6s} "
                          f"{row['coalesce'] or '-':3s}: "
                          f"{row['requests_per_s']:6.2f} "
                          f"req/s {row['aggregate_tok_s']:7.1f} tok/s  TTFT p50 {ms(row['ttft_p50_s'], 1):>7s} ms  "
                          f"CPU ms/token: {cpu}  completed {row['completed']}/{row['requests']}",
                          file=sys.stderr, flush=True)
    finally:
        for proc, _ in plain.values():
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        serve.shutdown()
        ray.shutdown()
    print("| path | mode | coalesce | round | replicas x threads | max ongoing | completed | req/s | aggregate tok/s | "
          "TTFT p50 (ms) | TTFT p95 (ms) | CPU ms/token |")
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_token"].items())
        print(f"| {r['path']} | {r['mode']} | {r['coalesce'] or '-'} | {r['round']} | "
              f"{r['replicas']}x{r['threads_per_replica']} | {r['max_ongoing'] or '-'} | "
              f"{r['completed']}/{r['requests']} | {r['requests_per_s']:.2f} | {r['aggregate_tok_s']:.1f} | "
              f"{ms(r['ttft_p50_s'])} | {ms(r['ttft_p95_s'])} | {cpu} |")
    if args.json:
        from ternlm.bench import machine_info
        report = {"command": "benchmarks/ray_serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "model": os.path.basename(args.model), "clients": args.clients, "max_tokens": args.max_tokens,
                  "max_sequences_per_replica": args.max_sequences, "context": args.context, "modes": modes,
                  "coalesce": coalescing,
                  "ray": ray.__version__, "machine": machine_info(), "rows": rows}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if all(r["completed"] == r["requests"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
