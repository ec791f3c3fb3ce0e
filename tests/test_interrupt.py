"""Ctrl-C during a long prompt. The C++ forward runs with the GIL released in chunks of
Transformer::kMaxChunk tokens and checks for signals between chunks (cpp/python/bind_model.cc,
CheckSignals), so a KeyboardInterrupt arrives within about one chunk's time, in generate()
(prefill, run by the engine thread a chunk per turn while the caller waits interruptibly)
as in logits() (forward); the interrupted call's sequence is freed (no slot stays in use)
and the next generation equals a fresh model's."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import default_sigint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ~50M multiply-adds per token, a KV cache of 8 KB per token
SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=1, vocab_size=512, max_position_embeddings=16384)
CONTEXT = 16384

# The child prints "ready <call>" just before each long call and "interrupted <call> <slots in use>"
# when the KeyboardInterrupt arrives; the prompt is sized so that the call would run for
# at least 8 s (one chunk timed first).
def _child_source():
    return r"""
import faulthandler, signal, sys, time
import numpy as np
faulthandler.register(signal.SIGUSR1, all_threads=True)   # the test asks for stacks on a hang
import ternlm
folder, context = sys.argv[1], int(sys.argv[2])
m = ternlm.load(folder, context=context, threads=1, progress=False)
ids = [int(i) for i in np.random.default_rng(0).integers(0, 256, size=context - 1)]
chunk_s = []
for _ in range(3):
    t0 = time.perf_counter()
    m.logits(ids[:64])
    chunk_s.append(time.perf_counter() - t0)
n = min(context - 1, 64 * max(2, int(8.0 / min(chunk_s)) + 1))      # >= 8 s uninterrupted
print("chunk", min(chunk_s), "tokens", n, flush=True)
for name, call in (("generate", lambda: m.generate(ids[:n], max_new_tokens=1)),
                   ("logits", lambda: m.logits(ids[:n]))):
    print("ready", name, flush=True)
    try:
        call()
        print("finished", name, flush=True)
    except KeyboardInterrupt:
        print("interrupted", name, m.active_sequences, flush=True)
after = m.generate([5, 6, 7, 8], max_new_tokens=12)
fresh = ternlm.load(folder, context=context, threads=1, progress=False).generate([5, 6, 7, 8], max_new_tokens=12)
print("same" if after == fresh else f"different {after!r} {fresh!r}", flush=True)
"""


@pytest.fixture(scope="module")
def long_prompt_model(tmp_path_factory):
    from ternlm.synthetic import write_synthetic_bitnet
    return write_synthetic_bitnet(tmp_path_factory.mktemp("interrupt") / "m", SHAPE, seed=3)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_stops_a_long_prompt_within_half_a_second(long_prompt_model):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.Popen([sys.executable, "-c", _child_source(), str(long_prompt_model), str(CONTEXT)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=default_sigint)
    out = queue.Queue()
    threading.Thread(target=lambda: [out.put(line.strip()) for line in p.stdout] + [out.put(None)],
                     daemon=True).start()
    lines, latencies = [], {}
    try:
        while True:
            line = out.get(timeout=120)
            if line is None:
                break
            lines.append(line)
            if line.startswith("ready "):
                time.sleep(0.5)                       # well into the prompt (the first chunk is done)
                p.send_signal(signal.SIGINT)
                sent = time.monotonic()
                try:
                    lines.append(out.get(timeout=10))
                except queue.Empty:
                    p.send_signal(signal.SIGUSR1)     # every thread's Python stack to stderr
                    time.sleep(1.0)
                    p.kill()
                    stacks = p.communicate(timeout=30)[1][-6000:]
                    pytest.fail(f"no KeyboardInterrupt 10 s after SIGINT during {line.split()[1]}: {lines}\n{stacks}")
                latencies[line.split()[1]] = time.monotonic() - sent
        p.wait(timeout=60)
    finally:
        p.kill()
    err = p.stderr.read()
    assert p.returncode == 0, "\n".join(lines) + err[-3000:]
    assert "interrupted generate 0" in lines and "interrupted logits 0" in lines, lines
    assert lines[-1] == "same", lines
    assert max(latencies.values()) < 0.5, (latencies, lines)
