"""ternlm next to llama.cpp (through llama-cpp-python) on the same weights and the same
machine, in one command: prefill and decode tok/s, peak RSS, the machine's read bandwidth
and each format's decode roofline. See benchmarks/README.md.

    TERNLM_CORE_DIR=build/bench PYTHONPATH=python .venv/bin/python benchmarks/vs_llamacpp.py \
        --threads 1,2 --reps 3 --json bench.json

Models:
  bitnet   random BitNet b1.58 weights of the 2B-4T shape (ternlm.synthetic), written once per
           seed into --workdir: an HF BitNet folder (ternlm's input, converted once per ternlm
           format and saved as a ternlm folder) and GGUF files in TQ2_0, TQ1_0, Q4_0, F16
           (write_gguf.py). The same matrices W = s * T in every file.
  smollm2  the default model's GGUF (SmolLM2-135M-Instruct Q4_1): ternlm int4 (the Q4_1 blocks
           imported without loss) and bf16, llama.cpp on the Q4_1 file as shipped and on an
           F16 copy written from it.
Every (model, engine, format, threads) run is a fresh process (benchmarks/bench_worker.py);
the runs are interleaved (rep 1 of everything, then rep 2, ...) and each row reports the
median and the [min, max] over --reps.

Roofline: decoding a token reads every weight once, so tok/s <= bandwidth / bytes per token,
with bytes per token = all layer matrices + the output head (tied: the whole embedding) +
norms + one embedding row (the KV cache, < 2% here, is left out). Bandwidth is ternlm's
probe (ternlm.bandwidth: streaming read of a large buffer, best of N), measured in this run
for each thread count before every repetition; the roofline uses the best sample (the
machine's capability; a sample taken while something else ran is lower).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ternlm.synthetic import SHAPES, model_config, write_synthetic_bitnet  # noqa: E402

# ternlm variants of the bitnet model: key -> (label, weights, head)
TERNLM_BITNET = {
    "ternary": ("ternary (bf16 head)", "ternary", None),
    "ternary-bf16chead": ("ternary (bf16c head: the bf16 values in 12 bits)", "ternary", "bf16c"),
    "ternary-int4head": ("ternary (int4 head)", "ternary", "int4"),
    "int4": ("int4 g32 (bf16 head)", "int4", None),
    "bf16": ("bf16", "bf16", None),
    "bf16c": ("bf16c (the bf16 values in 12 bits)", "bf16c", None),
}
GGUF_LABELS = {"TQ2_0": "TQ2_0 (f16 head)", "TQ1_0": "TQ1_0 (f16 head)", "Q4_0": "Q4_0 (f16 head)",
               "F16": "F16", "BF16": "BF16", "Q4_1": "Q4_1 (as shipped, Q8_0 head)"}
# (ternlm variant, llama.cpp format) pairs whose ratios are printed
BITNET_PAIRS = [("ternary", "TQ2_0"), ("ternary", "TQ1_0"), ("ternary-bf16chead", "TQ2_0"),
                ("ternary-int4head", "TQ2_0"), ("int4", "Q4_0"), ("bf16", "F16"), ("bf16", "BF16"),
                ("bf16c", "F16")]
TERNLM_SMOL = {"int4": ("int4 (Q4_1 imported, bf16 head)", "int4", None),
               "int4-int4head": ("int4 (Q4_1 imported, int4 head)", "int4", "int4"),
               "bf16": ("bf16", "bf16", None)}
SMOL_PAIRS = [("int4", "Q4_1"), ("int4-int4head", "Q4_1"), ("bf16", "F16"), ("bf16", "BF16")]
WORKDIR_VERSION = 2


def prompt_ids(vocab: int, seed: int, n: int) -> list:
    """n pseudo-random token ids in [3, vocab) (the same for every engine)."""
    import numpy as np
    rng = np.random.default_rng([int(seed), 77])
    return [int(i) for i in rng.integers(3, vocab, size=n)]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- preparing the files -----------------------------------------------------------------------
def gguf_bytes_per_token(path: str) -> int:
    """Weight bytes one decoded token reads from a GGUF: every tensor once, except that the
    token embedding counts one row when a separate output.weight exists."""
    import gguf
    r = gguf.GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    total = sum(sizes.values())
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    row = int(emb.n_bytes) // int(emb.shape[-1])          # GGUF shape is [n_embd, n_vocab]
    if "output.weight" in sizes:
        total += row - sizes["token_embd.weight"]
    else:
        total += row                                       # tied: the head reads it all, plus one row
    return total


def run_worker(request: dict, timeout: float) -> dict:
    """bench_worker.py in a fresh process; its result dict (or an error dict)."""
    with tempfile.TemporaryDirectory(prefix="ternlm-bench-") as tmp:
        req_path, res_path = os.path.join(tmp, "req.json"), os.path.join(tmp, "res.json")
        with open(req_path, "w", encoding="utf-8") as f:
            json.dump(request, f)
        env = dict(os.environ)
        import ternlm                                      # children import it from the same place
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ternlm.__file__)))
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        try:
            proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_worker.py"), req_path, res_path],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": "Timeout", "message": f"run exceeded {timeout:.0f} s"}
        if os.path.exists(res_path):
            with open(res_path, encoding="utf-8") as f:
                return json.load(f)
        return {"error": "Crash", "message": f"worker exited with {proc.returncode}: {proc.stdout[-2000:]}"}


def prepare_bitnet(args, shape: dict) -> dict:
    """Write (or reuse) the bitnet model files of `shape` (a dict like ternlm.synthetic.SHAPES'
    values); returns {"hf", "gguf": {fmt: path}, "ternlm": {key: spec}}."""
    from write_gguf import write_bitnet_gguf
    layers = shape["num_hidden_layers"]
    folder = os.path.join(args.workdir, f"{args.shape}-{layers}l-seed{args.seed}")
    os.makedirs(folder, exist_ok=True)
    manifest_path = os.path.join(folder, "manifest.json")
    manifest = {"version": WORKDIR_VERSION, "shape": shape, "seed": args.seed}
    old = None
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            old = json.load(f)
    if old != manifest:                                    # other settings or an older writer: start again
        for name in os.listdir(folder):
            p = os.path.join(folder, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        with open(manifest_path, "w", encoding="utf-8") as f:
            json.dump(manifest, f)
    out = {"gguf": {}, "ternlm": {}}
    hf = os.path.join(folder, "hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        log(f"writing {hf}")
        tmp = hf + ".part"
        shutil.rmtree(tmp, ignore_errors=True)
        write_synthetic_bitnet(tmp, shape, args.seed)
        os.replace(tmp, hf)
    out["hf"] = hf
    if "llama.cpp" in args.engines:
        for fmt in args.gguf_formats:
            path = os.path.join(folder, f"model-{fmt}.gguf")
            if not os.path.exists(path):
                log(f"writing {path}")
                write_bitnet_gguf(path, shape, fmt, args.seed)
            out["gguf"][fmt] = path
    if "ternlm" in args.engines:
        for key in args.ternlm_formats:
            _, weights, head = TERNLM_BITNET[key]
            saved = os.path.join(folder, f"ternlm-{key}")
            if args.reconvert and os.path.exists(saved):
                shutil.rmtree(saved)
            if not os.path.exists(saved):
                log(f"converting for ternlm: {saved}")
                res = run_worker({"prepare": True, "path": hf, "weights": weights, "head": head,
                                  "out": saved + ".part"}, args.timeout)
                if "error" in res:
                    log(f"  could not save a ternlm folder ({res['error']}: {res['message']}); "
                        f"runs will convert the HF folder at load")
                    shutil.rmtree(saved + ".part", ignore_errors=True)
                    out["ternlm"][key] = {"path": hf, "weights": weights, "head": head}
                    continue
                os.replace(saved + ".part", saved)
            out["ternlm"][key] = {"path": saved, "weights": None, "head": None}
    return out


def prepare_smollm2(args) -> dict | None:
    from write_gguf import write_dequantized_gguf
    src = args.smollm2
    if src is None:
        from ternlm import default_model
        src = default_model.default_model_path()
    folder = os.path.join(args.workdir, "smollm2")
    os.makedirs(folder, exist_ok=True)
    out = {"gguf": {}, "ternlm": {}}
    for fmt in (["Q4_1"] + args.smol_gguf_formats) if "llama.cpp" in args.engines else []:
        if fmt == "Q4_1":
            out["gguf"][fmt] = src
            continue
        path = os.path.join(folder, f"{os.path.splitext(os.path.basename(src))[0]}-{fmt}.gguf")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(src):
            log(f"writing {path}")
            write_dequantized_gguf(src, path, fmt)
        out["gguf"][fmt] = path
    for key, (_, weights, head) in TERNLM_SMOL.items() if "ternlm" in args.engines else ():
        out["ternlm"][key] = {"path": src, "weights": weights, "head": head}
    out["source"] = src
    return out


# ---- running -------------------------------------------------------------------------------------
def summarize(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def run_model(args, name, description, files, ternlm_labels, pairs, prompt, probe_bandwidth) -> dict:
    runs = []          # (engine, key, label, request base, bytes_per_token or None)
    for key, spec in files["ternlm"].items():
        runs.append(("ternlm", key, ternlm_labels[key][0], dict(spec, engine="ternlm"), None))
    for fmt, path in files["gguf"].items():
        runs.append(("llama.cpp", fmt, GGUF_LABELS.get(fmt, fmt),
                     {"engine": "llama.cpp", "path": path, "n_batch": max(512, len(prompt)),
                      "flash_attn": args.flash_attn}, gguf_bytes_per_token(path)))
    rows = {}
    for engine, key, label, base, bpt in runs:
        for t in args.threads:
            rows[(engine, key, t)] = {"engine": engine, "variant": key, "label": label, "threads": t,
                                      "runs": [], "errors": [], "bytes_per_token": bpt}
    context = max(512, len(prompt) + args.decode + 16)
    for rep in range(args.reps):
        probe_bandwidth()
        for t in args.threads:
            # interleave: ternlm variant, llama.cpp format, ternlm, llama.cpp, ...
            tern = [r for r in runs if r[0] == "ternlm"]
            lcpp = [r for r in runs if r[0] == "llama.cpp"]
            mixed = [x for pair in zip(tern, lcpp) for x in pair] + tern[len(lcpp):] + lcpp[len(tern):]
            for engine, key, label, base, _ in mixed:
                req = dict(base, threads=t, prompt_ids=prompt, decode_tokens=args.decode, context=context,
                           warmup_tokens=min(len(prompt), args.warmup))
                t0 = time.perf_counter()
                load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                res = run_worker(req, args.timeout)
                res["loadavg_1min_before"] = load_before
                row = rows[(engine, key, t)]
                if "error" in res:
                    row["errors"].append(f"{res['error']}: {res['message']}")
                    log(f"[{name} rep {rep + 1}/{args.reps} {t} thr] {engine} {label}: FAILED {res['error']}: "
                        f"{res['message'][:300]}")
                    continue
                row["runs"].append(res)
                if res.get("bytes_per_token"):
                    row["bytes_per_token"] = res["bytes_per_token"]
                log(f"[{name} rep {rep + 1}/{args.reps} {t} thr] {engine} {label}: prefill "
                    f"{res['prefill_tok_s']:.1f} t/s, decode {res['decode_tok_s'] or 0:.1f} t/s, "
                    f"rss {res['peak_rss_mb']:.0f} MB ({time.perf_counter() - t0:.0f} s)")
    out_rows = []
    for row in rows.values():
        row["prefill_tok_s"] = summarize([r["prefill_tok_s"] for r in row["runs"]])
        row["decode_tok_s"] = summarize([r["decode_tok_s"] for r in row["runs"]])
        row["peak_rss_mb"] = summarize([r["peak_rss_mb"] for r in row["runs"]])
        out_rows.append(row)
    ratios = []
    for t in args.threads:
        for tk, lk in pairs:
            a, b = rows.get(("ternlm", tk, t)), rows.get(("llama.cpp", lk, t))
            if not a or not b:
                continue
            entry = {"threads": t, "ternlm": a["label"], "llama.cpp": b["label"]}
            for metric in ("prefill_tok_s", "decode_tok_s"):
                x, y = a[metric], b[metric]
                entry[metric.replace("_tok_s", "_ratio")] = x["median"] / y["median"] if x and y else None
            ratios.append(entry)
    return {"name": name, "description": description, "prompt_tokens": len(prompt),
            "decode_tokens": args.decode, "rows": out_rows, "ratios": ratios}


# ---- report ---------------------------------------------------------------------------------------
def add_roofline(model: dict, bandwidth: dict, median_bandwidth: dict):
    """roofline_tok_s = GB/s * 1e9 / bytes per token (best bandwidth sample);
    roofline_fraction = median decode / that; roofline_fraction_median_probe: the same
    against the median sample (this machine's bandwidth moves by 2x within minutes, so
    the best sample alone overstates what a typical run could have had)."""
    for row in model["rows"]:
        bw, bpt = bandwidth.get(row["threads"]), row["bytes_per_token"]
        row["roofline_tok_s"] = bw * 1e9 / bpt if bw and bpt else None
        dec = row["decode_tok_s"]
        row["roofline_fraction"] = dec["median"] / row["roofline_tok_s"] if dec and row["roofline_tok_s"] else None
        mbw = median_bandwidth.get(row["threads"])
        row["roofline_fraction_median_probe"] = dec["median"] * bpt / (mbw * 1e9) if dec and bpt and mbw else None


def finish(result: dict, samples: dict):
    """Best (and median) bandwidth sample per thread count -> machine figures and every
    model's roofline."""
    bandwidth = {t: max(v) for t, v in samples.items() if v}
    median_bandwidth = {t: statistics.median(v) for t, v in samples.items() if v}
    result["machine"]["read_bandwidth_gb_s"] = {str(t): v for t, v in bandwidth.items()}
    result["machine"]["read_bandwidth_median_gb_s"] = {str(t): v for t, v in median_bandwidth.items()}
    result["machine"]["read_bandwidth_samples"] = {str(t): v for t, v in samples.items()}
    for model in result["models"]:
        add_roofline(model, bandwidth, median_bandwidth)


def _fmt_mb(nbytes):
    if not nbytes:
        return "—"
    mb = nbytes / 1e6
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.3g}"


def _fmt_stat(s, digits=1):
    if not s:
        return "—"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def format_report(result: dict) -> str:
    lines = []
    m = result["machine"]
    bw = ", ".join(f"{t} thr {v:.1f} GB/s" for t, v in sorted(m["read_bandwidth_gb_s"].items(), key=lambda x: int(x[0])))
    mbw = ", ".join(f"{t} thr {v:.1f}" for t, v in sorted(m.get("read_bandwidth_median_gb_s", {}).items(),
                                                          key=lambda x: int(x[0])))
    lines.append(f"machine: {m['cpu']} ({m['cpus']} cpus); read bandwidth (best of "
                 f"{len(next(iter(m['read_bandwidth_samples'].values())))} samples): {bw}; median: {mbw}"
                 + (f"; ternlm target {m['ternlm_target']}, prefetch {m['ternlm_prefetch_bytes']} B"
                    if m.get("ternlm_prefetch_bytes") is not None else ""))
    loads = [r["loadavg_1min_before"] for mdl in result["models"] for row in mdl["rows"] for r in row["runs"]
             if r.get("loadavg_1min_before") is not None]
    lines.append(f"llama.cpp: llama-cpp-python {result['settings'].get('llama_cpp_version')}; "
                 f"reps {result['settings']['reps']} (median [min–max])"
                 + (f"; 1-min load average before runs {min(loads):.1f}–{max(loads):.1f}" if loads else ""))
    for model in result["models"]:
        lines.append("")
        lines.append(f"## {model['description']} — prompt {model['prompt_tokens']}, decode {model['decode_tokens']}")
        head = ("thr", "engine", "weights", "prefill t/s", "decode t/s", "peak RSS MB", "MB/token",
                "roofline t/s", "% roofline", "% (median bw)")
        table, failures = [head], []
        for r in sorted(model["rows"], key=lambda r: (r["threads"], r["engine"] != "ternlm")):
            table.append((str(r["threads"]), r["engine"], r["label"], _fmt_stat(r["prefill_tok_s"]),
                          _fmt_stat(r["decode_tok_s"]), _fmt_stat(r["peak_rss_mb"], 0),
                          _fmt_mb(r["bytes_per_token"]),
                          f"{r['roofline_tok_s']:.1f}" if r["roofline_tok_s"] else "—",
                          f"{100 * r['roofline_fraction']:.0f}%" if r["roofline_fraction"] else "—",
                          f"{100 * r['roofline_fraction_median_probe']:.0f}%"
                          if r.get("roofline_fraction_median_probe") else "—"))
            if r["errors"]:
                failures.append(f"  {r['threads']} thr {r['engine']} {r['label']}: {len(r['errors'])} run(s) failed: "
                                f"{r['errors'][0][:200]}")
        lines += _columns(table) + failures
        if model["ratios"]:
            lines.append("")
            rt = [("thr", "ternlm", "vs llama.cpp", "prefill ×", "decode ×")]
            for x in model["ratios"]:
                rt.append((str(x["threads"]), x["ternlm"], x["llama.cpp"],
                           f"{x['prefill_ratio']:.2f}" if x["prefill_ratio"] else "—",
                           f"{x['decode_ratio']:.2f}" if x["decode_ratio"] else "—"))
            lines += _columns(rt)
    return "\n".join(lines)


def _columns(table):
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]


# ---- main -----------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="bitnet,smollm2", help="comma separated: bitnet, smollm2")
    ap.add_argument("--engines", default="ternlm,llama.cpp", help="comma separated: ternlm, llama.cpp")
    ap.add_argument("--threads", default="1,2", help="comma separated thread counts")
    ap.add_argument("--reps", type=int, default=None, help="fresh-process repetitions per run (default 3, quick 1)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128, quick 32)")
    ap.add_argument("--decode", type=int, default=None, help="decoded tokens (default 64, quick 8)")
    ap.add_argument("--warmup", type=int, default=32, help="prompt tokens of the untimed warm-up run")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 layers, short prompt, 1 rep, small probe")
    ap.add_argument("--shape", default="bitnet-2b", choices=list(SHAPES), help="bitnet model shape")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count of --shape")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf-formats", default="TQ2_0,TQ1_0,Q4_0,F16", help="llama.cpp formats of the bitnet model")
    ap.add_argument("--ternlm-formats", default=",".join(TERNLM_BITNET), help="ternlm variants of the bitnet model")
    ap.add_argument("--smollm2", default=None, help="SmolLM2 GGUF (default: ternlm's default model)")
    ap.add_argument("--smol-gguf-formats", default="F16", help="copies of the SmolLM2 GGUF written for llama.cpp")
    ap.add_argument("--workdir", default=os.path.join("build", "bench", "models"), help="where model files are kept")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention (default off)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    ap.add_argument("--json", default=None, help="write the full results here")
    ap.add_argument("--reconvert", action="store_true",
                    help="convert the ternlm folders again (after a change to ternlm's formats)")
    ap.add_argument("--prepare-only", action="store_true", help="write the model files, measure nothing")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.engines = [e for e in args.engines.split(",") if e]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.gguf_formats = [f for f in args.gguf_formats.split(",") if f]
    args.ternlm_formats = [f for f in args.ternlm_formats.split(",") if f]
    args.smol_gguf_formats = [f for f in args.smol_gguf_formats.split(",") if f]
    for bad in set(args.models) - {"bitnet", "smollm2"}:
        ap.error(f"--models: unknown model {bad!r}")
    for bad in set(args.engines) - {"ternlm", "llama.cpp"}:
        ap.error(f"--engines: unknown engine {bad!r}")
    for bad in set(args.ternlm_formats) - set(TERNLM_BITNET):
        ap.error(f"--ternlm-formats: unknown variant {bad!r} (choose from {', '.join(TERNLM_BITNET)})")
    if not args.threads or min(args.threads) < 1:
        ap.error("--threads: give thread counts >= 1")
    args.reps = args.reps or (1 if args.quick else 3)
    args.prompt = args.prompt or (32 if args.quick else 128)
    args.decode = args.decode if args.decode is not None else (8 if args.quick else 64)
    if args.quick and args.layers is None:
        args.layers = 2
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import ternlm
    from ternlm import bandwidth as tbw
    notes = []
    llama_version = None
    if "llama.cpp" in args.engines:
        try:
            import llama_cpp
            llama_version = llama_cpp.__version__
        except ImportError:
            args.engines.remove("llama.cpp")
            notes.append("llama_cpp is not importable (pip install '.[bench]'): ternlm runs only")
            log(notes[-1])
    # Files first (writing them is slow and noisy), then the bandwidth, then the runs.
    work = []          # (name, description, files, ternlm labels, pairs, prompt ids, shape dict)
    if "bitnet" in args.models:
        shape = dict(SHAPES[args.shape])
        if args.layers:
            shape["num_hidden_layers"] = args.layers
        c = model_config(shape)
        desc = (f"BitNet b1.58 {args.shape} shape, random ternary weights (hidden {c.hidden_size}, "
                f"ffn {c.intermediate_size}, {c.num_layers} layers, {c.num_heads}/{c.num_kv_heads} heads, "
                f"vocab {c.vocab_size}, tied)")
        work.append(("bitnet", desc, prepare_bitnet(args, shape), TERNLM_BITNET, BITNET_PAIRS,
                     prompt_ids(c.vocab_size, args.seed, args.prompt), dict(shape, name=args.shape)))
    if "smollm2" in args.models:
        import gguf
        files = prepare_smollm2(args)
        vocab = len(gguf.GGUFReader(files["source"]).get_field("tokenizer.ggml.tokens").data)
        ids = prompt_ids(vocab, args.seed, args.prompt)
        work.append(("smollm2", f"SmolLM2-135M-Instruct (default model, {os.path.basename(files['source'])})",
                     files, TERNLM_SMOL, SMOL_PAIRS, ids, None))
    if args.prepare_only:
        return 0

    probe = {"nbytes": (256 << 20) if args.quick else tbw.DEFAULT_BYTES, "repeats": 2 if args.quick else 5}
    samples = {t: [] for t in args.threads}

    def probe_bandwidth():
        for t in args.threads:
            samples[t].append(tbw.read_bandwidth(t, refresh=True, **probe))
        log("read bandwidth: " + ", ".join(f"{t} thr {v[-1]:.1f} GB/s" for t, v in samples.items()))
    result = {
        "command": [sys.executable] + sys.argv if argv is None else ["vs_llamacpp.py"] + list(argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": tbw.cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "read_bandwidth_gb_s": None, "read_bandwidth_samples": None, "probe": probe,
                    "ternlm_target": ternlm._core.current_target() if hasattr(ternlm._core, "current_target") else None,
                    "ternlm_prefetch_bytes": ternlm._core.prefetch_distance()},
        "settings": {"reps": args.reps, "threads": args.threads, "prompt": args.prompt, "decode": args.decode,
                     "engines": args.engines, "flash_attn": args.flash_attn, "llama_cpp_version": llama_version,
                     "ternlm_version": ternlm.__version__},
        "notes": notes, "models": [],
    }
    for name, desc, files, labels, pairs, ids, shape in work:
        model = run_model(args, name, desc, files, labels, pairs, ids, probe_bandwidth)
        if shape:
            model["shape"] = shape
        result["models"].append(model)
        finish(result, samples)
        if args.json:                                      # after each model, so a cut-off run keeps what it measured
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
    report = format_report(result)
    print(report)
    if args.json:
        result["report"] = report
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
