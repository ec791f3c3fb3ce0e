"""JSON helpers shared by the Hugging Face folder readers (io/hf.py, tokenizer.py) and
ternlm's own folder (io/own_format.py)."""
from __future__ import annotations

import json
import os

from ..config import token_ids


def parse_json(text, where: str):
    """json.loads with every failure a ValueError naming `where`: invalid JSON or UTF-8,
    nesting deep enough to exhaust the parser's recursion (a hostile file's [[[[...]]]]),
    and integers beyond Python's digit limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to parse") from None
    except ValueError as e:          # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ValueError(f"{where}: invalid JSON ({e})") from e


def read_json(path, missing_ok=False) -> dict:
    """The JSON object in `path`; {} when the file is absent and missing_ok. ValueError
    naming the file for invalid JSON or a top-level value that is not an object."""
    if missing_ok and not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = parse_json(f.read(), path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def id_list(value, field: str = "token id", where: str = "") -> list:
    """A config's token id field (None, an int or a list of ints) as a list of ints;
    ValueError naming where/field for anything else (floats, strings, negatives)."""
    return token_ids(value, field, where)
