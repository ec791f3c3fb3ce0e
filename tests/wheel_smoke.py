"""Smoke test of an installed ternlm wheel (run by tests/wheel_smoke.sh, in a fresh venv,
from a folder outside the source tree):

    python wheel_smoke.py [--system-libhwy-hidden]

Checks that ternlm is the installed package (not a source tree), that the only libhwy in
this process is the copy the wheel bundles (site-packages/ternlm.libs/, put there by
auditwheel), that quantize + matmul agree with numpy, and that a tiny random BitNet model
(written here by ternlm.synthetic: numpy + tokenizers, no torch) loads and generates.
--system-libhwy-hidden: also check first that the system's libhwy cannot be loaded, i.e.
that the caller really hid it. Any failure raises (non-zero exit) with what was found.
"""
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np


def check(cond, message):
    if not cond:
        raise SystemExit(f"wheel smoke test FAILED: {message}")


def check_system_libhwy_hidden():
    try:
        ctypes.CDLL("libhwy.so.1")
    except OSError as e:
        print(f"system libhwy is hidden: {e}")
        return
    check(False, "libhwy.so.1 can still be loaded from the system; the test would prove nothing")


def mapped_libhwy() -> set:
    """Paths of every mapped file whose name holds 'libhwy' (/proc/self/maps)."""
    found = set()
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and "libhwy" in os.path.basename(parts[5].strip()):
                found.add(parts[5].strip())
    return found


def check_bundled_libhwy(ternlm):
    pkg = os.path.dirname(os.path.realpath(ternlm.__file__))
    check(os.path.realpath(sys.prefix) in pkg,
          f"ternlm was imported from {pkg}, not from this venv ({sys.prefix})")
    libs = pkg + ".libs"                     # auditwheel's folder beside the package
    ext = os.path.realpath(ternlm._core.__file__)
    print(f"ternlm {pkg}\nextension {ext}")
    maps = mapped_libhwy()
    print("libhwy mapped:", *sorted(maps) or ["(none)"], sep="\n  ")
    check(maps, "no libhwy is mapped after import ternlm: the extension's dependency changed?")
    foreign = [p for p in maps if not os.path.realpath(p).startswith(libs + os.sep)]
    check(not foreign, f"ternlm loaded a libhwy that is not the bundled one (in {libs}): {foreign}")
    ldd = subprocess.run(["ldd", ext], capture_output=True, text=True)
    lines = [ln.strip() for ln in ldd.stdout.splitlines() if "libhwy" in ln]
    print("ldd:", *lines, sep="\n  ")
    # "libhwy-<hash>.so.1.0.3 => /.../ternlm/../ternlm.libs/libhwy-<hash>.so.1.0.3 (0x...)"
    resolved = [os.path.realpath(ln.split("=>", 1)[1].split("(", 1)[0].strip()) if "=>" in ln else ln
                for ln in lines]
    check(lines and all(r.startswith(libs + os.sep) for r in resolved),
          f"ldd resolves libhwy outside {libs}: {lines}")


def check_matmul(ternlm):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 160)).astype(np.float32)
    x = rng.standard_normal((3, 160)).astype(np.float32)
    for fmt, rtol in (("bf16", 1e-5), ("int4", 0.05)):
        q = ternlm.quantize(w, fmt)
        ref = x @ q.dequantize().T
        y = ternlm.matmul(x, q)
        err = np.abs(y - ref).max() / np.abs(ref).max()
        print(f"matmul {fmt}: max error {err:.2e} of the largest output")
        check(y.shape == (3, 48) and err < rtol, f"{fmt} matmul differs from numpy by {err:.3g}")
    # Ternary: the int8 activations and int32 sums of formats.py's numerics, redone here.
    q = ternlm.quantize(w, "ternary")
    t = q.ternary_values().astype(np.int32)
    s_w = np.float32(1.0) / np.float32(max(np.float32(np.abs(w.astype(np.float64)).mean()), np.float32(1e-5)))
    s_x = np.float32(127.0) / np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))
    xq = np.clip(np.rint(x * s_x[:, None]), -128, 127).astype(np.int32)
    ref = (xq @ t.T).astype(np.float32) / s_x[:, None] / s_w
    y = ternlm.matmul(x, q)
    err = np.abs(y - ref).max() / np.abs(ref).max()
    print(f"matmul ternary: max error {err:.2e} of the largest output")
    check(err < 1e-5, f"ternary matmul differs from numpy by {err:.3g}")


def check_model(ternlm):
    from ternlm.synthetic import write_synthetic_bitnet
    with tempfile.TemporaryDirectory(prefix="ternlm-smoke-") as tmp:
        folder = write_synthetic_bitnet(os.path.join(tmp, "tiny"), "tiny")
        for weights in (None, "int4"):
            m = ternlm.load(folder, weights=weights, threads=2, context=64, progress=False)
            m.eos_token_ids = []                       # random weights: decode a fixed count
            a = m.generate("Hello, world", max_new_tokens=8, temperature=0.0)
            b = m.generate("Hello, world", max_new_tokens=8, temperature=0.0)
            s = m.stats
            print(f"generate weights={weights}: {a!r} ({s['prompt_tokens']} prompt, "
                  f"{s['decode_tokens']} decoded tokens, {s['decode_tok_s']:.0f} tok/s)")
            check(isinstance(a, str) and a == b, f"greedy generation is not repeatable: {a!r} vs {b!r}")
            check(s["decode_tokens"] == 8 and s["prompt_tokens"] > 0, f"unexpected stats {s}")
            logits = np.asarray(m.logits([1, 2, 3]))
            check(np.isfinite(logits).all(), "logits are not finite")


def main(argv):
    if "--system-libhwy-hidden" in argv:
        check_system_libhwy_hidden()
    import ternlm
    check_bundled_libhwy(ternlm)
    check_matmul(ternlm)
    check_model(ternlm)
    print(f"wheel smoke test passed (ternlm on {ternlm._core.current_target()})")


if __name__ == "__main__":
    main(sys.argv[1:])
