"""Texts to score perplexity on.

    ternlm.texts.default_text() -> Text      # English prose that ships with the system
    ternlm.texts.read_text(path) -> Text     # the user's own file (UTF-8)

The default is never text written by ternlm: it is, in order of preference,
1. the GNU General Public License, version 3: the plain-text file
   /usr/share/common-licenses/GPL-3 from Debian's `base-files` package (an Essential
   package, so it is on every Debian and Ubuntu system, CI included) — about 35 kB,
   ~5,600 words of English legal prose, ~7,500 tokens with a Llama-style tokenizer;
2. where that file is absent (macOS, other distributions): the prose of the Python
   Language Reference that CPython's standard library ships in `pydoc_data.topics`
   (the text `help('if')` shows), topics joined in sorted order.
Well-known texts like the GPL are in most models' training data, so absolute perplexities
are low; what the comparison reads from them is the difference between weight formats
on the same text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

DEBIAN_GPL3 = "/usr/share/common-licenses/GPL-3"


@dataclass(frozen=True)
class Text:
    name: str        # what it is, for tables and plots
    source: str      # where it was found (a path or a module)
    text: str

    def __repr__(self):
        return f"Text({self.name!r}, source={self.source!r}, {len(self.text)} chars)"


def read_text(path) -> Text:
    """A UTF-8 text file -> Text. FileNotFoundError / ValueError name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such text file")
    try:
        with open(path, encoding="utf-8") as f:
            body = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not body.strip():
        raise ValueError(f"{path}: the text file is empty")
    return Text(os.path.basename(path), os.path.abspath(path), body)


def _python_reference_text() -> Text:
    from pydoc_data import topics   # CPython standard library
    body = "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))
    return Text("Python Language Reference (pydoc_data)", topics.__file__, body)


def default_text() -> Text:
    """The default English prose for perplexity (see the module docstring for which)."""
    if os.path.isfile(DEBIAN_GPL3):
        t = read_text(DEBIAN_GPL3)
        return Text("GNU GPL v3 (Debian base-files)", DEBIAN_GPL3, t.text)
    try:
        return _python_reference_text()
    except ImportError:
        raise FileNotFoundError(
            f"no default text: {DEBIAN_GPL3} (Debian base-files) is absent and this Python has "
            "no pydoc_data module; pass your own text (text=... or --text FILE)") from None


def as_text(text) -> Text:
    """None -> default_text(); a Text as is; os.PathLike -> read_text(path); a str -> the
    text itself (use pathlib.Path for a file name)."""
    if text is None:
        return default_text()
    if isinstance(text, Text):
        return text
    if isinstance(text, os.PathLike):
        return read_text(text)
    if isinstance(text, str):
        if not text.strip():
            raise ValueError("text is empty")
        return Text("text", "<str>", text)
    raise TypeError(f"text must be None, a str, a pathlib.Path or a ternlm.texts.Text, got {type(text).__name__}")


__all__ = ["Text", "default_text", "read_text", "as_text", "DEBIAN_GPL3"]
