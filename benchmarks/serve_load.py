"""Load test of `ternlm serve`: N concurrent streaming clients on loopback.

    PYTHONPATH=python .venv/bin/python benchmarks/serve_load.py [--model PATH] [--clients 1,4,16]
        [--requests 32] [--max-tokens 64] [--threads 2] [--max-sequences 16] [--direct] [--json OUT]

Starts `python -m ternlm.server` (a process of its own, so the clients' Python does not
share the server's GIL) on 127.0.0.1 with a free port, then for each N: N client threads
take requests from a fixed list of --requests chat completions (streamed, greedy,
max_tokens each, a different user message per request) until it is empty. Each client is
plain http.client + a server-sent-events reader (the openai client's per-chunk parsing
would be measured along with the server). Per N: requests/s, time to first token p50/p95
(first chunk with text), aggregate completion tok/s (usage.completion_tokens summed over
the wall time of the N) and whether every request completed (finish_reason present and
`data: [DONE]` received). Bounded: a fixed number of requests, loopback only, every socket
with a timeout. Default model: ternlm's default (SmolLM2-135M-Instruct).

--direct adds, right after each N through the server, the same requests through the Python
API in this process (N threads, Model.stream on the same chat-template token ids, a model
loaded with the server's options): what HTTP, JSON and the event loop cost on top of the
engine, measured interleaved on the same machine.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time

TOPICS = ["the sea", "a mountain", "bread", "rain", "a library", "the moon", "bicycles", "a garden", "winter",
          "trains", "coffee", "a river", "music", "clocks", "bees", "the desert"]


def one_request(port, i, max_tokens, timeout, stream=True):
    """One chat completion, streamed (or, stream=False, answered whole); (ttft_s, total_s,
    completion_tokens, completed). A whole answer has no time to first token (None)."""
    body = {"model": "m", "messages": [{"role": "user", "content": f"Write about {TOPICS[i % len(TOPICS)]} "
                                                                   f"(request {i})."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    ttft, tokens, finished, done = None, 0, False, False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return None, time.perf_counter() - t0, 0, False
        if not stream:
            answer = json.loads(r.read())
            return (None, time.perf_counter() - t0, answer["usage"]["completion_tokens"],
                    answer["choices"][0]["finish_reason"] is not None)
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if ttft is None and c["delta"].get("content"):
                    ttft = time.perf_counter() - t0
                if c.get("finish_reason"):
                    finished = True
    except OSError:
        pass
    finally:
        conn.close()
    return ttft, time.perf_counter() - t0, tokens, finished and done


def direct_request(model, i, max_tokens):
    """The same request through Model.stream in this process (reusing cached prompt
    prefixes as the server does for chat requests)."""
    msgs = [{"role": "user", "content": f"Write about {TOPICS[i % len(TOPICS)]} (request {i})."}]
    ids = model.tokenizer.encode(model.tokenizer.apply_chat_template(msgs), add_special_tokens=False)
    stats: dict = {}
    t0 = time.perf_counter()
    ttft = None
    for piece in model.stream(ids, max_new_tokens=max_tokens, temperature=0, _stats=stats, _reuse_cache=True):
        if ttft is None and piece:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0, stats["decode_tokens"], True


def ms(seconds, digits=0) -> str:
    """Seconds as milliseconds for a table; '-' where there is no value (no first token)."""
    return "-" if seconds is None else f"{seconds * 1e3:.{digits}f}"


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_level(request, clients, requests):
    todo = list(range(requests))
    lock = threading.Lock()
    results = []

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            res = request(i)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = [r[0] for r in results if r[0] is not None]
    tokens = sum(r[2] for r in results)
    return {"clients": clients, "requests": requests, "completed": sum(r[3] for r in results),
            "wall_s": wall, "requests_per_s": requests / wall, "ttft_p50_s": percentile(ttfts, 0.5),
            "ttft_p95_s": percentile(ttfts, 0.95), "completion_tokens": tokens, "aggregate_tok_s": tokens / wall,
            "latency_p50_s": percentile([r[1] for r in results], 0.5)}


def start_server(args):
    cmd = [sys.executable, "-m", "ternlm.server", "--port", "0", "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    for flag, value in (("--threads", args.threads), ("--max-sequences", args.max_sequences),
                        ("--weights", args.weights), ("--context", args.context)):
        if value:
            cmd += [flag, str(value)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "OpenAI API at" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    port = int(line.split(" at ")[1].split()[0].rsplit(":", 1)[1].split("/")[0])
    threading.Thread(target=proc.stderr.read, daemon=True).start()       # keep its log pipe drained
    return proc, port, line.strip(), cmd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: ternlm's default model")
    p.add_argument("--weights", default=None)
    p.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels (default: 1,4,16)")
    p.add_argument("--requests", type=int, default=32, help="requests per level (default: 32)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (default: 64)")
    p.add_argument("--threads", type=int, default=2, help="server worker threads (default: 2)")
    p.add_argument("--max-sequences", type=int, default=16, help="the server's --max-sequences (default: 16; 0: ternlm.load's default)")
    p.add_argument("--context", type=int, default=1024, help="the server's --context (default: 1024)")
    p.add_argument("--timeout", type=float, default=600, help="per-request socket timeout in seconds")
    p.add_argument("--direct", action="store_true",
                   help="also run each N through the Python API in this process (the engine without HTTP)")
    p.add_argument("--json", default=None, help="write the rows here (e.g. benchmarks/results/serve_load.json)")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    proc, port, banner, cmd = start_server(args)
    model = None
    if args.direct:
        import ternlm
        from ternlm.default_model import default_model_path
        model = ternlm.load(args.model or default_model_path(), weights=args.weights, threads=args.threads,
                            context=args.context, max_sequences=args.max_sequences or None, progress=False)
    paths = {"server": lambda i: one_request(port, i, args.max_tokens, args.timeout)}
    if model is not None:
        paths["direct"] = lambda i: direct_request(model, i, args.max_tokens)
    try:
        for request in paths.values():
            request(10_000)                                          # warm-up
        rows = []
        for n in levels:
            for path, request in paths.items():
                row = {"path": path, **run_level(request, n, args.requests)}
                rows.append(row)
                print(f"{path:6s} N={n:3d}  {row['requests_per_s']:6.2f} req/s  TTFT p50 "
                      f"{ms(row['ttft_p50_s'], 1):>7s} ms  p95 {ms(row['ttft_p95_s'], 1):>7s} ms  "
                      f"{row['aggregate_tok_s']:7.1f} tok/s  completed {row['completed']}/{row['requests']}",
                      file=sys.stderr)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    from ternlm.bench import machine_info
    print("| path | clients | requests | completed | req/s | TTFT p50 (ms) | TTFT p95 (ms) | aggregate tok/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['path']} | {r['clients']} | {r['requests']} | {r['completed']} | {r['requests_per_s']:.2f} | "
              f"{ms(r['ttft_p50_s'])} | {ms(r['ttft_p95_s'])} | {r['aggregate_tok_s']:.1f} |")
    if args.json:
        report = {"command": "benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "server_command": " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd)),
                  "server": banner, "max_tokens": args.max_tokens, "machine": machine_info(), "rows": rows}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if all(r["completed"] == r["requests"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
