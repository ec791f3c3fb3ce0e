"""Hugging Face Hub ids -> local paths, through huggingface_hub's cache.

    ternlm.load("microsoft/bitnet-b1.58-2B-4T")                   a model repository
    ternlm.load("org/name", revision="v1.0")                       a branch, tag or commit
    ternlm.load("tiiuae/Falcon-E-3B-Instruct-GGUF/ggml-model-i2_s.gguf")   one .gguf file of a repository
    ternlm --model ORG/NAME [--revision REV] ...                   the same from the command line

A repository id downloads (huggingface_hub.snapshot_download) only what ternlm reads: the
config and generation config, the tokenizer files, and the safetensors weights, which are
the files model.safetensors.index.json names or else model.safetensors (a repository
holding other weights too, e.g. Mistral's consolidated.safetensors, costs nothing
extra). "org/name/path/file.gguf" downloads that one file (hf_hub_download). Files land in
huggingface_hub's usual cache (HF_HOME / HF_HUB_CACHE; models--org--name/{blobs, refs,
snapshots}) and are reused from there; with HF_HUB_OFFLINE=1, or when the Hub cannot be
reached, the cached snapshot is used, and its absence is a FileNotFoundError that says
what was looked for and how to get it. A local path always wins over a Hub id of the same
spelling.
"""
from __future__ import annotations

import os
import re

# Files of a Hugging Face model folder that ternlm reads (io/hf.py, tokenizer.py).
METADATA_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "chat_template.jinja", "model.safetensors.index.json")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_GGUF = re.compile(rf"({_NAME}/{_NAME})/((?:{_NAME}/)*{_NAME}\.gguf)")


def gguf_hub_id(path) -> tuple | None:
    """("org/name", "dir/file.gguf") for "org/name/dir/file.gguf" that is no local path, else None."""
    s = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(s, str) or os.path.exists(s) or s.startswith((".", "~", "/")):
        return None
    m = _GGUF.fullmatch(s)
    return (m.group(1), m.group(2)) if m else None


def _unreachable_message(spec: str, repo_id: str, revision, error) -> str:
    from huggingface_hub import constants
    from .hints import missing_model_message
    rev = f" at revision {revision!r}" if revision else ""
    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
    return (f"{missing_model_message(spec)}. ternlm looked for {repo_id}{rev} in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}): it is not there, and {offline} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})")


def _download(fn, spec: str, repo_id: str, revision, **kwargs) -> str:
    """fn(repo_id, revision=..., **kwargs) with huggingface_hub's errors turned into ternlm's."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, IncompleteSnapshotError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    try:
        return fn(repo_id=repo_id, revision=revision, **kwargs)
    except GatedRepoError as e:             # (a RepositoryNotFoundError)
        raise FileNotFoundError(f"{spec}: the Hub repository {repo_id} is gated: accept its terms on "
                                f"huggingface.co and log in (`hf auth login` or HF_TOKEN)") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{spec}: no such file or folder, and no Hub repository {repo_id} (or it is "
                                f"private: log in with `hf auth login` or set HF_TOKEN)") from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"{spec}: the Hub repository {repo_id} has no revision {revision!r}") from e
    except IncompleteSnapshotError as e:    # (a LocalEntryNotFoundError)
        raise FileNotFoundError(f"{spec}: the cached snapshot of {repo_id} lacks files ternlm needs and the Hub "
                                f"cannot be reached to complete it ({str(e).splitlines()[0]})") from e
    except LocalEntryNotFoundError as e:    # (an EntryNotFoundError)
        raise FileNotFoundError(_unreachable_message(spec, repo_id, revision, e)) from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{spec}: the Hub repository {repo_id} has no file "
                                f"{kwargs.get('filename')!r}") from e


def resolve(path, revision=None) -> str:
    """A local path for `path`: itself if it exists; for a Hub id the cached (downloaded
    if needed) snapshot folder or .gguf file (module docstring); else FileNotFoundError
    naming the likely mistake. revision: only with a Hub id."""
    from .hints import looks_like_hub_id, missing_model_message
    s = os.fspath(path)
    if revision is not None and not isinstance(revision, str):
        raise ValueError(f"revision must be a string (a branch, tag or commit of a Hub repository), got {revision!r}")
    if os.path.exists(s):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hugging Face Hub ids; {s} is a local path")
        return s
    gguf = gguf_hub_id(s)
    if gguf is None and not looks_like_hub_id(s):
        raise FileNotFoundError(missing_model_message(s))
    try:
        import huggingface_hub
    except ImportError as e:
        raise FileNotFoundError(f"{missing_model_message(s)} (ternlm resolves Hub ids with huggingface_hub, "
                                f"which is not installed: pip install huggingface_hub)") from e
    if gguf is not None:
        return _download(huggingface_hub.hf_hub_download, s, gguf[0], revision, filename=gguf[1])
    folder = _download(huggingface_hub.snapshot_download, s, s, revision, allow_patterns=list(METADATA_FILES))
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{s}: the Hub repository (snapshot {folder}) has no config.json: not a "
                                f"Hugging Face model folder; for a GGUF file pass ORG/NAME/FILE.gguf")
    index = os.path.join(folder, "model.safetensors.index.json")
    weights = ["model.safetensors"]
    if os.path.exists(index):
        from .io.jsonfile import read_json
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: not a safetensors index with a weight_map of file names")
        weights = sorted(set(weight_map.values()))
    # the commit the first call resolved: both calls read one snapshot even if a branch moves
    commit = os.path.basename(os.path.normpath(folder))
    return _download(huggingface_hub.snapshot_download, s, s, commit,
                     allow_patterns=list(METADATA_FILES) + [glob_escape(w) for w in weights])


def glob_escape(name: str) -> str:
    """name as an fnmatch pattern matching only itself (allow_patterns are patterns)."""
    return re.sub(r"([*?\[])", r"[\1]", name)
