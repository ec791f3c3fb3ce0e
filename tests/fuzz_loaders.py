#!/usr/bin/env python3
"""A time-boxed, seeded mutation fuzzer over ternlm's loaders: Hugging Face folders
(config.json, generation_config.json, safetensors shards and their index,
tokenizer.json, tokenizer_config.json), GGUF files and saved ternlm folders.

    python tests/fuzz_loaders.py --seconds 180 --seed 1     # what `make fuzz` runs
    python tests/fuzz_loaders.py --seed 1 --only 417        # input 417 of seed 1 again
    python tests/fuzz_loaders.py --replay build/fuzz/failure-1

Processes:

    driver (this script, stdlib only)  mutates seed files, keeps the tally, prints the report
     └─ worker x --jobs                --python, with TERNLM_CORE_DIR=--core-dir and
        │                              LD_PRELOAD=--preload: imports ternlm once, writes the
        │                              seeds, then forks one child per input
        └─ child                       memory cap, then fuzz_worker.target (load, tokenize,
                                       generate); writes its outcome to a pipe and exits

The seeds are tiny valid models written here (ternlm.synthetic's BitNet writer, a Llama
folder through ternlm's safetensors writer, GGUF through tests/gguf_files.py, ternlm folders
through Model.save). Input i of seed S is a function of (S, i) alone: one seed file,
1-4 stacked mutations (JSON-aware for JSON files and safetensors headers, byte-level
otherwise, biased towards headers).

Verdicts (the policy is also tests/BAD_INPUTS.md's; fuzz_worker.ALLOWED):
  fine     the input loads and generates, or the child raises ValueError (any subclass:
           SafetensorsError, JSONDecodeError, UnicodeDecodeError) or FileNotFoundError:
           what the API documents for a bad or incomplete model, and what the CLI turns
           into one line and exit status 2.
  failure  any other exception (TypeError, KeyError, AttributeError, OverflowError,
           RecursionError, ZeroDivisionError, RuntimeError, ...: a check that is missing or
           raises the wrong type); MemoryError (inputs are a few hundred KB, so reaching the
           memory cap means a size from the file was trusted before it was checked against
           the file); a signal (crash, or a sanitizer report); no outcome within --timeout.
A failure is printed with its traceback, the child's stderr and the mutated file
(zlib + base64), saved under --out, and makes the exit status 1, unless tests/fuzz_known.txt
(--known) lists its type and function as a defect not fixed yet. The report ends with the
iteration count and the histogram of outcomes.

Sanitizer builds: `make fuzz FUZZ_SANITIZE=1` (CI) runs this under tests/sanitize_env.sh,
which builds build/sanitize and sets TERNLM_CORE_DIR and LD_PRELOAD for the workers to
inherit. By hand: --core-dir names the build, --preload (or FUZZ_PRELOAD) libasan and
libstdc++ (both: ASan must come first and find the real __cxa_throw). ASan reserves
terabytes of address space, so the cap is then ASan's max_allocation_size_mb instead of
RLIMIT_AS (a too large C++ allocation then aborts with ASan's report instead of raising
MemoryError: a failure either way). Any ASan / UBSan report in a child's stderr fails the
input, also when the child went on.
"""
from __future__ import annotations

import argparse
import base64
import collections
import copy
import json
import os
import random
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRESS_EVERY = 30                                # seconds between progress lines
FULL_REPORTS = 5                                  # failures printed in full (input included)
WEIGHTS = [None] * 6 + ["bf16", "bf16c", "int4", "ternary"]

INTS = [0, 1, -1, 2, 3, 7, 8, 16, 31, 32, 64, 255, 256, 4096, 65535, 65536, 2**31 - 1, 2**31,
        2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**9, 10**18, -2**31, -2**63]
VALUES = INTS + [0.0, -0.0, 0.5, 1e-40, 1e308, float("nan"), float("inf"), float("-inf"), "", "x", "(",
                 "((a+)+)+$", "llama", "bitnet", "F32", "BF16", "U8", "I64", "int4", "ternary",
                 "../../../../etc/passwd", "/etc/passwd", "\u0000", "\u00e9\ud7ff", None, True, False, [], {},
                 [0], [1, 2], ["("], [[1]], {"type": "linear"}, {"rope_type": "llama3", "factor": 8.0}]


# ---- mutations (driver) ------------------------------------------------------------------------
def mutate_bytes(rng, data: bytes, hot: int) -> bytes:
    """1-4 stacked byte-level edits; 80% of them at offsets below `hot` (the header)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not b:
            b += bytes([rng.randrange(256)])
        end = min(len(b), hot) if hot and rng.random() < 0.8 else len(b)
        at = rng.randrange(max(end, 1))
        op = rng.randrange(8)
        if op == 0:
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[at] = rng.randrange(256)
        elif op in (2, 3):                          # an interesting integer, 1-8 bytes LE
            width = rng.choice([1, 2, 4, 8])
            v = rng.choice(INTS) & ((1 << 8 * width) - 1)
            b[at:at + width] = v.to_bytes(width, "little")
        elif op == 4 and rng.random() < 0.3:
            del b[at:]
        elif op == 5:
            del b[at:at + rng.randint(1, 64)]
        elif op == 6:
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            n = rng.randint(1, 64)
            b[at:at] = b[at:at + n]
    return bytes(b)


def _value(rng):
    """A fresh copy of an interesting value (edits later in the same input must not change VALUES)."""
    return copy.deepcopy(rng.choice(VALUES))


def _walk(rng, obj):
    """(container, key) of a random node, reached by a random walk from the root."""
    parent, key, node = None, None, obj
    while isinstance(node, (dict, list)) and node and (parent is None or rng.random() < 0.7):
        k = rng.choice(list(node.keys())) if isinstance(node, dict) else rng.randrange(len(node))
        parent, key, node = node, k, node[k]
    return parent, key


def mutate_json_obj(rng, obj):
    """One structural edit, in place where possible; returns the (new) root."""
    parent, key = _walk(rng, obj)
    if parent is None:
        return _value(rng) if rng.random() < 0.5 else obj
    op = rng.randrange(10)
    old = parent[key]
    if op <= 4:
        if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
            parent[key] = rng.choice([old + 1, old - 1, old * 2, old // 2, -old, old + 8, old * 1000])
        else:
            parent[key] = _value(rng)
    elif op == 5:
        del parent[key]
    elif op == 6:                                   # a duplicate: another entry's value
        parent[key] = json.loads(json.dumps(rng.choice(list(parent.values()) if isinstance(parent, dict)
                                                       else parent)))
    elif op == 7:
        if isinstance(parent, dict):
            parent[rng.choice(["x", "", str(key) + "_", "__metadata__", "format"])] = _value(rng)
        else:
            parent.insert(key, _value(rng))
    elif op == 8:                                   # a type change
        parent[key] = [old] if rng.random() < 0.5 else str(old)
    else:                                           # deep nesting (recursion limits)
        parent[key] = json.loads("[" * 200 + "1" + "]" * 200)
    return obj


def mutate_json_text(rng, data: bytes) -> bytes:
    try:
        obj = json.loads(data)
    except ValueError:
        return mutate_bytes(rng, data, 0)
    for _ in range(rng.randint(1, 3)):
        obj = mutate_json_obj(rng, obj)
    text = json.dumps(obj)
    if rng.random() < 0.05:                         # nesting beyond any recursion limit
        text = text.replace("[", "[" * 5000 + "[", 1).replace("]", "]" + "]" * 5000, 1)
    return text.encode("utf-8", "surrogatepass")


def mutate_safetensors(rng, data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    if rng.random() < 0.35 or n > len(data):
        return mutate_bytes(rng, data, 8 + n)
    header = mutate_json_text(rng, data[8:8 + n])
    length = len(header) if rng.random() < 0.9 else rng.choice([len(header) - 1, len(header) + 1, 0, 2**63])
    return (length % 2**64).to_bytes(8, "little") + header + data[8 + n:]


def mutate(rng, data: bytes, kind: str, hot: int):
    """New file content, or None to delete the file."""
    if rng.random() < 0.02:
        return None if rng.random() < 0.5 else b""
    if kind == "json":
        return mutate_json_text(rng, data) if rng.random() < 0.85 else mutate_bytes(rng, data, 0)
    if kind == "safetensors":
        return mutate_safetensors(rng, data)
    return mutate_bytes(rng, data, hot)


def make_input(seed, i, targets):
    """Input i of seed: (target, file name, new content or None, weights)."""
    rng = random.Random(f"{seed}:{i}")
    t = rng.choice(targets)
    fname = rng.choice(sorted(t["files"]))
    kind, hot = t["files"][fname]
    return t, fname, mutate(rng, t["data"][fname], kind, hot), rng.choice(WEIGHTS)


def write_input(scratch, t, fname, content):
    """The seed's folder in `scratch`, hard links except the mutated file."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    for name in os.listdir(t["root"]):
        if name == fname:
            continue
        try:
            os.link(os.path.join(t["root"], name), os.path.join(scratch, name))
        except OSError:
            shutil.copyfile(os.path.join(t["root"], name), os.path.join(scratch, name))
    if content is not None:
        with open(os.path.join(scratch, fname), "wb") as f:
            f.write(content)
    return os.path.join(scratch, t["load"]) if t["load"] else scratch


# ---- workers (driver side) ------------------------------------------------------------------
class Worker:
    def __init__(self, args, index):
        env = dict(os.environ)
        if args.core_dir:
            env["TERNLM_CORE_DIR"] = os.path.abspath(args.core_dir)
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(HERE), "python"), HERE]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if args.preload:
            env["LD_PRELOAD"] = args.preload
        if "asan" in env.get("LD_PRELOAD", ""):
            env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0",
                                                         "allocator_may_return_null=1",
                                                         f"max_allocation_size_mb={args.mem_mb}"]))
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        env["TOKENIZERS_PARALLELISM"] = "false"
        self.index, self.busy = index, None
        self.proc = subprocess.Popen([args.python, os.path.abspath(__file__), "--worker"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def send(self, request):
        self.busy = request
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def receive(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fuzz worker {self.index} exited (status {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def read_known(path):
    """The --known file: "ExceptionType file.py:function" per line, # comments."""
    if not path:
        return set()
    with open(path, encoding="utf-8") as f:
        return {" ".join(line.split("#")[0].split()) for line in f} - {""}


def verdict(result, known=frozenset()):
    """(histogram key, failure?, known?) of one outcome."""
    o = result["outcome"]
    if o == "ok":
        return "ok", False, False
    if o == "exception":
        if not result["allowed"] and f"{result['type']} {result['site']}" in known:
            return f"{result['type']} {result['site']} (known)", False, True
        return result["type"], not result["allowed"], False
    return o, True, False                           # crash / hang / no-result / worker-lost


def report_failure(args, n, req, result, t, fname, scratch):
    if n > FULL_REPORTS:                            # the first ones in full, the rest in a line
        what = (f"{result['type']} at {result['site']}, line {result['line']}" if result["outcome"] == "exception"
                else result["outcome"])
        print(f"FAIL {n}: input {req.get('i')}, {t['name']}/{fname}: {what}", flush=True)
        return
    out = os.path.join(args.out, f"failure-{n}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(scratch, out)
    meta = {"iteration": req.get("i"), "seed": args.seed, "target": t["name"], "file": fname,
            "load": t["load"], "weights": req["weights"], "result": result}
    with open(os.path.join(out, "input.json"), "w") as f:
        json.dump(meta, f, indent=1)
    lines = [f"FAIL {n}: input {req.get('i')} of seed {args.seed} (replay: --seed {args.seed} --only "
             f"{req.get('i')}), {t['name']}/{fname}, weights={req['weights']}"]
    if result["outcome"] == "exception":
        lines.append(f"  {result['type']}: {result['message']}")
        lines.append("  " + result["traceback"].rstrip().replace("\n", "\n  "))
    else:
        lines.append(f"  {result['outcome']}: {result.get('detail', '')}")
    if result.get("stderr"):
        lines.append("  child stderr:\n    " + result["stderr"].rstrip().replace("\n", "\n    "))
    path = os.path.join(scratch, fname)
    if os.path.exists(path):
        blob = base64.b64encode(zlib.compress(open(path, "rb").read(), 9)).decode()
        lines.append(f"  input {fname} (zlib+base64, {len(blob)} chars): {blob}")
    else:
        lines.append(f"  input: {fname} deleted")
    lines.append(f"  saved in {out}")
    print("\n".join(lines), flush=True)


def run(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ternlm-fuzz-")
    workers = [Worker(args, j) for j in range(args.jobs)]
    try:
        workers[0].send({"cmd": "seeds", "dir": os.path.join(work, "seeds")})
        targets = workers[0].receive()["targets"]
        workers[0].busy = None
        for t in targets:
            t["data"] = {}
            for f in t["files"]:
                with open(os.path.join(t["root"], f), "rb") as fh:
                    t["data"][f] = fh.read()
        if args.replay:
            return replay(args, workers[0])
        print(f"fuzzing {len(targets)} seeds ({', '.join(t['name'] for t in targets)}) with seed {args.seed}, "
              f"{args.jobs} worker(s), {args.seconds:.0f} s, memory cap {args.mem_mb} MiB, timeout {args.timeout} s",
              flush=True)
        known, known_seen = read_known(args.known), set()
        inject = args.inject.split(",") if args.inject else []
        hist, per_target, sites, failures = collections.Counter(), collections.Counter(), collections.Counter(), 0
        order = args.only
        i, done, started = 0, 0, time.monotonic()
        deadline, next_note = started + args.seconds, started + PROGRESS_EVERY
        sel = selectors.DefaultSelector()
        for w in workers:
            sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        pending = {}
        while True:
            for w in workers:
                more = (i < len(order)) if order is not None else time.monotonic() < deadline
                if w.busy is None and more and failures < args.max_failures:
                    k = order[i] if order is not None else i
                    t, fname, content, weights = make_input(args.seed, k, targets)
                    scratch = os.path.join(work, f"in-{w.index}")
                    path = write_input(scratch, t, fname, content)
                    w.send({"cmd": "run", "i": k, "path": path, "weights": weights, "timeout": args.timeout,
                            "mem_mb": args.mem_mb, "inject": inject[k] if k < len(inject) else None})
                    pending[w.index] = (t, fname, scratch)
                    i += 1
            if not any(w.busy for w in workers):
                break
            if time.monotonic() >= next_note:          # a sign of life in long CI logs
                print(f"[{time.monotonic() - started:.0f} s] {done} inputs, {failures} failure(s)", flush=True)
                next_note += PROGRESS_EVERY
            ready = sel.select(timeout=args.timeout + 60)
            if not ready:                           # a worker stopped answering (it times its
                ready = [(None, w) for w in workers if w.busy]   # children out itself)
            for key, _ in ready:
                w = key.data if key is not None else _
                req = w.busy
                try:
                    if key is None:
                        raise RuntimeError("no answer from the fuzz worker")
                    result = w.receive()
                except (RuntimeError, ValueError) as e:
                    result = {"outcome": "worker-lost", "detail": str(e)}
                    sel.unregister(w.proc.stdout)
                    w.proc.kill()
                    workers[w.index] = w = Worker(args, w.index)
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                w.busy = None
                t, fname, scratch = pending.pop(w.index)
                name, bad, is_known = verdict(result, known)
                hist[name + (" (FAILURE)" if bad else "")] += 1
                if is_known:
                    known_seen.add(f"{result['type']} {result['site']}")
                if bad:
                    where = f"{result['site']}, line {result['line']}" if "site" in result else t["name"]
                    sites[f"{name} at {where}"] += 1
                per_target[t["name"]] += 1
                done += 1
                if bad:
                    failures += 1
                    report_failure(args, failures, req, result, t, fname, scratch)
        print(f"\n{done} iterations in {time.monotonic() - started:.0f} s, "
              f"{failures} failure(s)")
        print("per seed: " + ", ".join(f"{k} {v}" for k, v in sorted(per_target.items())))
        print("outcomes:")
        for k, v in hist.most_common():
            print(f"  {v:6d}  {k}")
        if known:
            print(f"known defects ({args.known}): {len(known_seen)} of {len(known)} seen"
                  + ("; not seen: " + ", ".join(sorted(known - known_seen)) if known - known_seen else ""))
        if sites:
            print("failures by place:")
            for k, v in sites.most_common():
                print(f"  {v:6d}  {k}")
        return 1 if failures else 0
    finally:
        for w in workers:
            try:
                w.close()
            except Exception:
                w.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def replay(args, w) -> int:
    with open(os.path.join(args.replay, "input.json")) as f:
        meta = json.load(f)
    path = os.path.join(args.replay, meta["load"]) if meta["load"] else args.replay
    w.send({"cmd": "run", "path": path, "weights": meta["weights"], "timeout": args.timeout,
            "mem_mb": args.mem_mb})
    result = w.receive()
    print(json.dumps(result, indent=1))
    return 1 if verdict(result, read_known(args.known))[1] else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 60)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=lambda v: [int(x) for x in v.split(",")], default=None, metavar="I[,J...]",
                   help="run these inputs of --seed only")
    p.add_argument("--replay", metavar="DIR", help="load a failure folder saved by an earlier run")
    p.add_argument("--jobs", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)),
                   help="worker processes (default: half the cores, at most 4)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("FUZZ_TIMEOUT", 20)),
                   help="seconds per input before it counts as a hang (default 20)")
    p.add_argument("--mem-mb", type=int, default=2048, help="memory cap per input (default 2048 MiB)")
    p.add_argument("--known", metavar="FILE", help="defects not fixed yet, \"ExceptionType file.py:function\" "
                   "per line (tests/fuzz_known.txt): reported, not failures")
    p.add_argument("--max-failures", type=int, default=20,
                   help=f"stop after this many failures (the first {FULL_REPORTS} are printed in full)")
    p.add_argument("--out", default=os.path.join("build", "fuzz"), help="where failing inputs are saved")
    p.add_argument("--python", default=os.environ.get("FUZZ_PYTHON") or sys.executable,
                   help="interpreter of the workers (env FUZZ_PYTHON)")
    p.add_argument("--core-dir", default=os.environ.get("FUZZ_CORE_DIR"),
                   help="CMake build folder with the _core module to load (env FUZZ_CORE_DIR; default: "
                        "TERNLM_CORE_DIR or the installed one)")
    p.add_argument("--preload", default=os.environ.get("FUZZ_PRELOAD"),
                   help="LD_PRELOAD for the workers, e.g. libasan.so (env FUZZ_PRELOAD)")
    p.add_argument("--inject", metavar="HOW[,HOW...]",
                   help="inputs 0, 1, ... fail this way: crash, hang, keyerror or memory (checks the fuzzer "
                        "itself; tests/test_fuzz_loaders.py)")
    args = p.parse_args(argv)
    if args.inject and not set(args.inject.split(",")) <= {"crash", "hang", "keyerror", "memory"}:
        p.error(f"--inject {args.inject}: choose from crash, hang, keyerror, memory")
    return run(args)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:              # a worker process (Worker starts it)
        from fuzz_worker import worker_main       # tests/ is sys.path[0]
        sys.exit(worker_main())
    sys.exit(main())
