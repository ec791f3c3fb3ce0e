"""JSON helpers shared by the Hugging Face folder readers (io/hf.py, tokenizer.py)."""
from __future__ import annotations

import json
import os


def read_json(path, missing_ok=False) -> dict:
    """The JSON object in `path`; {} when the file is absent and missing_ok. ValueError
    naming the file for invalid JSON or a top-level value that is not an object."""
    if missing_ok and not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def id_list(value) -> list:
    """A config's token id field (None, an int or a list of ints) as a list of ints."""
    if value is None:
        return []
    return [int(x) for x in value] if isinstance(value, (list, tuple)) else [int(value)]
