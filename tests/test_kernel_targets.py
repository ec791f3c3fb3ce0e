"""Highway dynamic dispatch: every target this CPU supports is compiled and can be
forced, and the matmul kernels agree across all of them. The test output names the
targets that ran (the per-target tests in test_matmul.py carry them in their ids)."""
import os
import platform

import numpy as np
import pytest

import ternlm
from ternlm import _core

TARGETS = _core.supported_targets()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_report_targets_exercised(capsys):
    with capsys.disabled():
        print(f"\n[ternlm] Highway targets exercised: {', '.join(TARGETS)} "
              f"(default: {_core.current_target()})")
    assert TARGETS and _core.current_target() == TARGETS[0]
    # The portable fallback is always there: SCALAR or EMU128 (Highway 1.0.3), or SSE2 on
    # x86 with later Highway releases (the x86-64 baseline, built instead of EMU128).
    assert TARGETS[-1] in ("SCALAR", "EMU128", "SSE2")


def test_fast_x86_targets_are_compiled_where_the_cpu_has_them():
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        # qemu-user passes the host's x86 /proc/cpuinfo to an emulated aarch64 process.
        assert not any(t.startswith(("AVX", "SSE")) for t in TARGETS)
        assert not _core.avx3_vnni()
        assert not _core.amx()
        return
    assert not _core.arm_dotprod()
    flags = cpu_flags()
    if "avx2" in flags and "fma" in flags:
        assert "AVX2" in TARGETS
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        assert "AVX3" in TARGETS
    if {"avx512_vnni", "avx512vbmi", "avx512_vbmi2", "vpclmulqdq", "vaes", "avx512_bitalg"} <= flags:
        assert "AVX3_DL" in TARGETS  # vpdpbusd path
    # Cascade Lake: AVX3 target, ternary kernel with vpdpbusd (test_matmul runs both paths)
    assert _core.avx3_vnni() == ("avx512_vnni" in flags)
    # Sapphire Rapids+: AMX tiles for ternary prefill (Linux grants them to every process
    # that asks since 5.16; test_matmul runs both paths)
    assert _core.amx() == ({"amx_tile", "amx_int8", "avx512f", "avx512bw"} <= flags)


def test_set_target_switches_and_reset_restores():
    try:
        for t in TARGETS:
            _core.set_target(t)
            assert _core.current_target() == t
            assert _core.supported_targets() == TARGETS  # listing ignores the forced one
    finally:
        _core.reset_target()
    assert _core.current_target() == TARGETS[0]


def test_set_target_rejects_unknown_names():
    with pytest.raises(ValueError, match="set_target: 'NOPE' is not a supported target; supported: "):
        _core.set_target("NOPE")
    assert _core.current_target() == TARGETS[0]


@pytest.mark.parametrize("fmt", ["ternary", "int4", "bf16", "bf16c", "f32", "int8", "q6", "nano:1.0"])
def test_all_targets_agree(fmt):
    rng = np.random.default_rng(0)
    q = ternlm.quantize(rng.standard_normal((130, 1152)).astype(np.float32), fmt)
    x = rng.standard_normal((5, 1152)).astype(np.float32)
    results = {}
    try:
        for t in TARGETS:
            _core.set_target(t)
            results[t] = ternlm.matmul(x, q)
    finally:
        _core.reset_target()
    base = results[TARGETS[-1]]
    for t, y in results.items():
        if fmt in ("ternary", "nano:1.0"):  # exact integer sums, same scaling: identical
            np.testing.assert_array_equal(y, base, err_msg=t)
        else:  # only the f32 summation order differs
            np.testing.assert_allclose(y, base, rtol=1e-4, atol=1e-4, err_msg=t)


def test_prefetch_default_follows_the_cpu():
    """4096 bytes ahead on Intel CPUs with AVX-512 (where it was measured to help), 0 on
    everything else (AMD, ARM, Intel without AVX-512)."""
    expected = 0
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
        vendor = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                    break
        if vendor == "GenuineIntel" and "avx512f" in cpu_flags():
            expected = 4096
    assert _core.default_prefetch_distance() == expected
    if "TERNLM_PREFETCH" not in os.environ:
        assert _core.prefetch_distance() == expected


@pytest.mark.parametrize("value,expected", [("0", 0), ("128", 128), (" 8192 ", 8192), ("", None)])
def test_prefetch_environment_variable_sets_the_distance(value, expected):
    from ternlm import _native
    before = _core.prefetch_distance()
    try:
        _native._apply_prefetch_env({"TERNLM_PREFETCH": value})  # what importing ternlm does
        assert _core.prefetch_distance() == (before if expected is None else expected)
    finally:
        _core.set_prefetch_distance(before)


@pytest.mark.parametrize("value", ["abc", "100", "-64", "2097152", "1e3"])
def test_bad_prefetch_environment_variable_is_a_clear_error(value):
    from ternlm import _native
    before = _core.prefetch_distance()
    with pytest.raises(ValueError, match=r"TERNLM_PREFETCH=.*multiple of 64"):
        _native._apply_prefetch_env({"TERNLM_PREFETCH": value})
    assert _core.prefetch_distance() == before


@pytest.mark.parametrize("value", ["0", "1", ""])
def test_amx_environment_variable(value):
    from ternlm import _native
    try:
        _native._apply_amx_env({"TERNLM_AMX": value})  # what importing ternlm does
        # "1" allows AMX only where the CPU has it; "" leaves the default (allowed)
        assert _core.amx() == (value != "0" and ({"amx_tile", "amx_int8", "avx512f", "avx512bw"} <= cpu_flags()
                                                  and platform.machine().lower() in ("x86_64", "amd64")))
    finally:
        _core.set_amx(True)
    with pytest.raises(ValueError, match="TERNLM_AMX='yes': expected 0"):
        _native._apply_amx_env({"TERNLM_AMX": "yes"})


@pytest.mark.parametrize("fmt", ["ternary", "int4", "bf16", "f32", "int8", "q6"])
def test_few_rows_match_single_rows_on_every_target(fmt):
    """1..9 activation rows (a verify step's sizes, both sides of the 4- and 8-row kernels):
    each row equals that row alone (bit for bit for ternary's integer sums), and the f32 kernel
    matches numpy, on every target."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((70, 320)).astype(np.float32)
    q = ternlm.quantize(w, fmt)
    try:
        for t in TARGETS:
            _core.set_target(t)
            for n in range(1, 10):
                x = rng.standard_normal((n, 320)).astype(np.float32)
                y = ternlm.matmul(x, q)
                alone = np.stack([ternlm.matmul(x[i], q) for i in range(n)])
                if fmt == "ternary":
                    np.testing.assert_array_equal(y, alone, err_msg=f"{t} n={n}")
                else:
                    np.testing.assert_allclose(y, alone, rtol=1e-4, atol=1e-4, err_msg=f"{t} n={n}")
                if fmt == "f32":
                    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4,
                                               atol=1e-4, err_msg=f"{t} n={n}")
    finally:
        _core.reset_target()
