"""ComparisonTable: the result of ternlm.compare — a list of dicts, one per weight format,
that prints as a table (terminal and notebook), writes JSON, and plots.

Row keys (units in the name; None where not measured):
    format                   "bf16" | "int4" | "ternary"
    layer_bits_per_weight    stored bits per weight of the layer matrices (q k v o gate up down)
    model_bits_per_weight    stored bits per parameter of the whole model (embed, head, norms too)
    weight_bytes             sum of the bytes of every stored tensor (QuantizedMatrix.nbytes, norms)
    file_bytes               size of the folder Model.save() writes (weights + tokenizer files);
                             None (and `file_error` says why) if saving failed
    peak_rss_mb              peak resident memory of a fresh process that loaded this format and
                             generated, read before the perplexity pass (whose logits do not depend
                             on the format); it includes the conversion at load, which a folder
                             written by Model.save skips
    rss_after_load_mb        resident memory right after load (Linux; JSON only)
    engine_bytes             bytes the C++ engine holds: weights, KV cache, buffers (JSON only)
    load_s                   ternlm.load(model, weights=format) wall time, conversion included
    prompt_tokens, prefill_tok_s     prompt length and prefill speed (best of the repeats)
    decode_tokens, decode_tok_s      tokens decoded greedily and decode speed (best of the repeats)
    ppl, ppl_tokens          perplexity on the text and the tokens it scored
    bytes_per_token          weight bytes one decoded token reads: every layer matrix, the output
                             head, the norms and one embedding row (the KV cache is not counted)
    bandwidth_gb_s           the machine's measured streaming read bandwidth (ternlm.bandwidth)
    roofline_tok_s           bandwidth / bytes_per_token: the decode speed the memory allows
    achieved                 decode_tok_s / roofline_tok_s
`table.meta` holds what is common to all rows (model, text, threads, window, stride, ...).
"""
from __future__ import annotations

import html
import json
import math
import os
import textwrap

# (key, header, format) for the printed table; the JSON has every key. Headers are short so
# that the table fits 100 columns; the legend under it (ComparisonTable.legend) spells
# each one out. The read bandwidth is the same for every row: it is in the caption.
COLUMNS = [
    ("format", "format", "{}"),
    ("layer_bits_per_weight", "bits/w", "{:.2f}"),
    ("model_bits_per_weight", "model", "{:.2f}"),
    ("file_bytes", "file MB", "MB"),
    ("peak_rss_mb", "RSS MB", "{:.0f}"),
    ("load_s", "load", "{:.2f}"),
    ("prefill_tok_s", "prefill", "{:.1f}"),
    ("decode_tok_s", "decode", "{:.1f}"),
    ("ppl", "ppl", "sig4"),
    ("bytes_per_token", "MB/tok", "MB"),
    ("roofline_tok_s", "roofline", "{:.1f}"),
    ("achieved", "achieved", "{:.0%}"),
]
WIDTH = 100          # the text table and its legend fit this many columns (for typical values)
ENG_FROM = 1e5       # from here on numbers print in engineering notation: 4.08e21, 67.9e6


def eng(value: float) -> str:
    """`value` in engineering notation with 3 significant digits: the exponent is a
    multiple of 3 (4.08e21, 67.9e6, 123e9), so thousands line up with SI prefixes."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    exp = int(math.floor(math.log10(abs(value)) / 3) * 3)
    mant = value / 10 ** exp
    text = f"{mant:.{2 if abs(mant) < 10 else 1 if abs(mant) < 100 else 0}f}"
    if abs(float(text)) >= 1000:              # 999.6 rounds up into the next group
        exp, text = exp + 3, f"{mant / 1000:.2f}"
    return f"{text}e{exp}"


def _cell(value, fmt) -> str:
    if value is None:
        return "-"
    if fmt == "MB":
        value = value / 1e6
        fmt = "{:.1f}"
    if fmt == "{}":
        return str(value)
    if fmt != "{:.0%}" and abs(value) >= ENG_FROM:
        return eng(value)
    if fmt == "sig4":                          # 4 significant digits below ENG_FROM
        a = abs(value)
        fmt = "{:.0f}" if a >= 1000 else "{:.1f}" if a >= 100 else "{:.2f}" if a >= 10 else "{:.3f}"
    return fmt.format(value)


class ComparisonTable(list):
    """A list of row dicts (see the module docstring) plus `meta`.

    str(table) is the caption, the table and the legend; repr(table) the caption and the
    table; table.legend() the legend alone; in a notebook it renders as HTML with both."""

    def __init__(self, rows=(), meta=None):
        super().__init__(dict(r) for r in rows)
        self.meta = dict(meta or {})

    # ---- access -------------------------------------------------------------------------------
    def row(self, fmt: str) -> dict:
        for r in self:
            if r.get("format") == fmt:
                return r
        raise KeyError(f"no row for format {fmt!r}; formats: {[r.get('format') for r in self]}")

    def column(self, key: str) -> list:
        return [r.get(key) for r in self]

    # ---- text -----------------------------------------------------------------------------------
    def _cells(self):
        head = [h for _, h, _ in COLUMNS]
        body = [[_cell(r.get(k), f) for k, _, f in COLUMNS] for r in self]
        return head, body

    def bandwidth_note(self) -> str:
        """ "32.4 GB/s, measured 3 days ago" (or "measured now", "given"): the figure every
        roofline uses and how old it was when the comparison ran."""
        m = self.meta
        if not m.get("bandwidth_gb_s"):
            return ""
        note = f"{m['bandwidth_gb_s']:.1f} GB/s"
        source = m.get("bandwidth_source")
        if source == "given":
            return note + ", given"
        if source == "probe":
            return note + ", measured now"
        if source == "cache" and m.get("bandwidth_age_s") is not None:
            from ..bandwidth import age_text
            return note + f", measured {age_text(m['bandwidth_age_s'])}"
        return note

    def _caption(self) -> str:
        m = self.meta
        parts = []
        if m.get("model"):
            parts.append(f"model: {os.path.basename(os.path.normpath(str(m['model'])))}")
        if m.get("threads"):
            parts.append(f"{m['threads']} threads")
        if m.get("bandwidth_gb_s"):
            parts.append(f"bandwidth {self.bandwidth_note()}")
        return " | ".join(parts)

    def legend(self) -> str:
        """What each column means, wrapped to WIDTH columns."""
        return "\n".join(textwrap.fill(e, WIDTH, subsequent_indent="  ") for e in self._legend_entries())

    def _legend_entries(self) -> list:
        m = self.meta
        runs = f", best of {m['repeats']}" if m.get("repeats") else ""
        lengths = (f" ({m['prompt_tokens']}-token prompt, {m['decode_tokens']} tokens decoded)"
                   if m.get("prompt_tokens") and m.get("decode_tokens") else "")
        text = ""
        if m.get("text_name"):
            text = (f" on {m['text_name']} ({m.get('ppl_tokens', '?')} tokens, window {m.get('window')}, "
                    f"stride {m.get('stride')})")
        bw = self.bandwidth_note()
        cpu = f" of this {m['cpu']}" if m.get("cpu") else ""
        entries = [
            "bits/w layers: stored bits per weight of the layer matrices; model: the same over the "
            "whole model (embedding, head and norms included). file MB: the folder Model.save writes. "
            "RSS MB: peak resident memory of the process that measured the format. load: seconds to "
            "load and convert.",
            f"prefill, decode: tokens/s{runs}{lengths}. ppl: perplexity{text}, lower is better.",
            f"MB/tok: weight bytes one decoded token reads. roofline: the read bandwidth{cpu}"
            + (f" ({bw})" if bw else "") + " / MB/tok, the most tokens/s memory allows. "
            "achieved: decode / roofline; it passes 100% when the weights fit in the CPU caches, which "
            "serve them faster than the memory bandwidth the roofline assumes (tiny models).",
        ]
        return entries

    def to_markdown(self) -> str:
        head, body = self._cells()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)

    def __repr__(self) -> str:
        head, body = self._cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
        fmt_row = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                         for i, (c, w) in enumerate(zip(cells, widths)))
        lines = [fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in body]
        caption = self._caption()
        return (caption + "\n" if caption else "") + "\n".join(lines)

    def __str__(self) -> str:
        return repr(self) + "\n\n" + self.legend()

    def _repr_html_(self) -> str:
        head, body = self._cells()
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        cap = html.escape(self._caption())
        legend = "<br>".join(html.escape(e) for e in self._legend_entries())
        return (f"<table><caption style='caption-side:top;text-align:left'>{cap}</caption>"
                f"<thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"
                f"<p style='font-size:smaller'>{legend}</p>")

    # ---- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"meta": self.meta, "rows": [dict(r) for r in self]}

    def to_json(self, path=None, indent=2) -> str:
        """The table as JSON ({"meta": ..., "rows": [...]}); also written to `path` if given."""
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=False)
        if path is not None:
            with open(os.fspath(path), "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path) -> "ComparisonTable":
        s = os.fspath(text_or_path)
        if not s.lstrip().startswith("{"):
            with open(s, encoding="utf-8") as f:
                s = f.read()
        data = json.loads(s)
        return cls(data.get("rows", []), data.get("meta", {}))

    # ---- plot ---------------------------------------------------------------------------------------
    def _plot_title(self) -> str:
        """Model, threads and CPU on one line; the perplexity text on the next."""
        m = self.meta
        first = [os.path.basename(os.path.normpath(str(m["model"])))] if m.get("model") else []
        if m.get("threads"):
            first.append(f"{m['threads']} threads")
        if m.get("cpu"):
            first.append(str(m["cpu"]))
        title = " — ".join(first)
        if m.get("text_name"):
            title += f"\nperplexity on {m['text_name']} ({m.get('ppl_tokens', '?')} tokens)"
        return title

    def plot(self, path=None):
        """Three panels: stored size per format; decode speed beside the memory roofline;
        perplexity against decode speed (marker area ~ file size). Returns the matplotlib
        Figure and, with `path`, saves it there (PNG, SVG, PDF by the suffix)."""
        try:
            import matplotlib
            if path is not None and "matplotlib.pyplot" not in __import__("sys").modules:
                matplotlib.use("Agg")      # headless save: no display needed
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("ComparisonTable.plot needs matplotlib: pip install 'ternlm[plot]'") from None
        names = self.column("format")
        colors = [{"bf16": "#4c72b0", "int4": "#dd8452", "ternary": "#55a868"}.get(n, "#8172b2") for n in names]
        x = range(len(self))
        fig, (ax_size, ax_speed, ax_q) = plt.subplots(1, 3, figsize=(14, 4.2))

        size = [(r.get("file_bytes") or r.get("weight_bytes") or 0) / 1e6 for r in self]
        ax_size.bar(x, size, color=colors)
        ax_size.set_xticks(list(x), names)
        ax_size.set_ylabel("MB on disk" if all(r.get("file_bytes") for r in self) else "MB of weights")
        ax_size.set_title("size (labels: bits per weight, whole model)")
        ax_size.set_ylim(0, max(size + [1e-9]) * 1.15)
        for i, r in enumerate(self):
            if r.get("model_bits_per_weight") is not None:
                ax_size.annotate(f"{r['model_bits_per_weight']:.2f}\nbits/weight", (i, size[i]), ha="center",
                                 va="bottom", fontsize=8)

        dec = [r.get("decode_tok_s") or 0 for r in self]
        roof = [r.get("roofline_tok_s") or 0 for r in self]
        w = 0.38
        ax_speed.bar([i - w / 2 for i in x], dec, w, color=colors, label="decode (measured)")
        ax_speed.bar([i + w / 2 for i in x], roof, w, color="none", edgecolor=colors, hatch="//",
                     label="roofline (bandwidth / bytes per token)")
        ax_speed.set_xticks(list(x), names)
        ax_speed.set_ylabel("tokens / s")
        bw = self.meta.get("bandwidth_gb_s")
        ax_speed.set_title("decode vs roofline" + (f" ({bw:.0f} GB/s)" if bw else ""))
        ax_speed.set_ylim(0, max(dec + roof + [1e-9]) * 1.25)
        ax_speed.legend(fontsize=8, loc="upper left")
        for i, r in enumerate(self):
            if r.get("achieved") is not None:
                ax_speed.annotate(f"{r['achieved']:.0%}", (i - w / 2, dec[i]), ha="center", va="bottom")

        ppl = [r.get("ppl") for r in self]
        area = [max(30.0, 600.0 * s / max(size + [1e-9])) for s in size]
        ax_q.scatter(dec, [p if p is not None else float("nan") for p in ppl], s=area, c=colors, alpha=0.8)
        for i, n in enumerate(names):
            if ppl[i] is not None:
                ax_q.annotate(f"{n}: {_cell(ppl[i], 'sig4')}", (dec[i], ppl[i]), textcoords="offset points",
                              xytext=(6, 6))
        ax_q.set_xlabel("decode tokens / s")
        known = [p for p in ppl if p]
        if known and max(known) / min(known) > 5:      # post-training ternary can be far worse
            ax_q.set_yscale("log")
        ax_q.set_ylabel("perplexity (lower is better)")
        ax_q.set_title("quality vs speed (area ~ size)")
        ax_q.margins(0.25)

        fig.suptitle(self._plot_title(), fontsize=10)
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), dpi=110)
        return fig


__all__ = ["ComparisonTable", "COLUMNS"]
