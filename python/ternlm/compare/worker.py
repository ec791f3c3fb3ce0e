"""One row of ternlm.compare: load a model in one weight format and measure it.

ternlm.compare runs this in a fresh Python process per format (`python -m
ternlm.compare.worker REQUEST.json RESULT.json`) so that each format's peak RSS is its
own and not the high-water mark of the formats before it. `measure_format` can also be
called directly (in-process; then peak RSS is the process's so far).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np

from ..memory import peak_rss_mb

HEAD_MATRICES = ("embed", "lm_head")


def _current_rss_mb():
    """VmRSS now (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _folder_bytes(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def weight_accounting(model) -> dict:
    """Stored sizes of a loaded ternlm.Model: bits per weight of the layer matrices and of
    the whole model, total stored bytes, and the weight bytes one decoded token reads."""
    from ..formats import QuantizedMatrix
    tensors = model._matrices
    if tensors is None:
        raise ValueError("this Model holds no weight objects (built without ternlm.load)")
    layer_bytes = layer_params = all_bytes = all_params = norm_bytes = 0
    for name, value in tensors.items():
        if isinstance(value, QuantizedMatrix):
            rows, cols = value.shape
            nbytes, params = int(value.nbytes), int(rows) * int(cols)
            if name not in HEAD_MATRICES:
                layer_bytes += nbytes
                layer_params += params
        else:
            arr = np.asarray(value)
            nbytes, params = int(arr.nbytes), int(arr.size)
            norm_bytes += nbytes
        all_bytes += nbytes
        all_params += params
    embed = tensors["embed"]
    head = tensors.get("lm_head", embed)      # tied embeddings: the head matmul reads embed
    embed_row = int(embed.nbytes) // int(embed.shape[0])
    return {
        "layer_bits_per_weight": 8.0 * layer_bytes / layer_params if layer_params else None,
        "model_bits_per_weight": 8.0 * all_bytes / all_params if all_params else None,
        "weight_bytes": all_bytes,
        "parameters": all_params,
        "bytes_per_token": layer_bytes + int(head.nbytes) + norm_bytes + embed_row,
    }


def measure_format(model_path, fmt, text, threads=None, context=None, prompt_tokens=128,
                   decode_tokens=32, max_tokens_ppl=1024, window=512, stride=256, repeats=3,
                   save_file=True) -> dict:
    """Load `model_path` with weights=fmt and measure one comparison row (see
    ternlm.compare.table for the keys). `text` is the perplexity text (a str)."""
    import ternlm

    context = int(context or max(window, prompt_tokens + decode_tokens + 8))
    t0 = time.perf_counter()
    m = ternlm.load(model_path, weights=fmt, threads=threads, context=context, progress=False)
    row = {"format": fmt, "load_s": time.perf_counter() - t0, "rss_after_load_mb": _current_rss_mb()}

    # Speed: a prompt cut from the text itself, greedy decode, best of `repeats` after a warm-up.
    ids = m.tokenizer.encode(text, add_special_tokens=False)
    prompt = m.tokenizer.decode(ids[:prompt_tokens])
    m.generate(prompt[:200], max_new_tokens=2, temperature=0.0)          # warm-up: pools, page-in
    best_prefill = best_decode = 0.0
    for _ in range(max(1, int(repeats))):
        m.generate(prompt, max_new_tokens=decode_tokens, temperature=0.0)
        s = m.stats
        best_prefill = max(best_prefill, s["prompt_tok_s"])
        if s["decode_tokens"] > 0:
            best_decode = max(best_decode, s["decode_tok_s"])
        row["prompt_tokens"], row["decode_tokens"] = s["prompt_tokens"], s["decode_tokens"]
    row["prefill_tok_s"] = best_prefill
    row["decode_tok_s"] = best_decode or None      # None: EOS came before a second token
    row["peak_rss_mb"] = peak_rss_mb()
    # After the RSS reading: the engine hands out each matrix as a transient copy.
    row.update(weight_accounting(m))
    row["engine_bytes"] = int(getattr(m, "memory_bytes", 0)) or None

    # Quality: sliding-window perplexity over the first max_tokens_ppl tokens of the text.
    ppl_ids = m.tokenizer.encode(text)[:max_tokens_ppl]
    w = min(int(window), context, len(ppl_ids))
    row["ppl"] = m.perplexity(ppl_ids, window=w, stride=min(int(stride), w))
    row["ppl_tokens"] = len(ppl_ids)

    row["file_bytes"] = None
    if save_file:
        folder = tempfile.mkdtemp(prefix="ternlm-compare-")
        try:
            m.save(os.path.join(folder, "model"))
            row["file_bytes"] = _folder_bytes(folder)
        except Exception as e:      # the other numbers stand; the parent warns with this
            row["file_error"] = f"Model.save failed: {type(e).__name__}: {e}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    row["threads"] = threads
    return row


def main(argv=None) -> int:
    """python -m ternlm.compare.worker REQUEST.json RESULT.json: measure_format(**request);
    writes {"row": {...}} or the error (ternlm.worker_io)."""
    from ..worker_io import run_worker
    return run_worker(sys.argv[1:] if argv is None else argv, "python -m ternlm.compare.worker",
                      lambda request: {"row": measure_format(**request)})


if __name__ == "__main__":
    sys.exit(main())
