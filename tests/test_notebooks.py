"""The notebooks run top to bottom and are committed clean. They read as teaching material,
so what they show is checked here: the test inserts CHECKS' cells (in memory) after the cell
that computes the values and runs them in the same kernel."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300       # the whole compare of notebook 02 is one cell

# notebook stem -> [(a line of the cell after which the check runs, the check)]
CHECKS = {
    "01_quickstart": [
        ("m = ternlm.load(default_model_path())", """
assert m.formats["layers.0.q"] == "int4"
"""),
        ("text = m.generate(prompt, max_new_tokens=24)", """
assert isinstance(text, str) and text.strip()
assert 1 <= m.stats["decode_tokens"] <= 24 and m.stats["decode_tok_s"] > 0
assert m.stats["prompt_tokens"] == len(m.tokenizer.encode(prompt))
"""),
        ("for piece in m.stream(prompt, max_new_tokens=24):", """
assert "".join(pieces) == text and len(pieces) > 1
"""),
        ("reply = m.chat(messages, max_new_tokens=16)", """
assert "Paris" in reply
"""),
        ("b = m.generate(\"Once upon a time\"", """
assert a == b
"""),
    ],
    "02_compare_formats": [
        ("table = ternlm.compare(default_model_path()", """
rows = {r["format"]: r for r in table}
bf16, int4, tern = rows["bf16"], rows["int4"], rows["ternary"]

assert list(rows) == ["bf16", "int4", "ternary"]
assert tern["layer_bits_per_weight"] < int4["layer_bits_per_weight"] < bf16["layer_bits_per_weight"] == 16
assert tern["file_bytes"] < int4["file_bytes"] < bf16["file_bytes"]
assert tern["bytes_per_token"] < int4["bytes_per_token"] < bf16["bytes_per_token"]
for r in table:
    assert abs(r["roofline_tok_s"] - r["bandwidth_gb_s"] * 1e9 / r["bytes_per_token"]) < 1e-6 * r["roofline_tok_s"]
    assert r["decode_tok_s"] > 0 and r["achieved"] > 0 and r["peak_rss_mb"] > 0
assert abs(int4["ppl"] / bf16["ppl"] - 1) < 0.1       # same weights up to int8 activations
assert tern["ppl"] > 2 * bf16["ppl"]                  # post-training ternary hurts a small model
"""),
        ("fig = table.plot()", """
# The figure shows the table's numbers: sizes in MB, measured decode and roofline tok/s.
ax_size, ax_speed, ax_quality = fig.axes
assert [round(p.get_height(), 3) for p in ax_size.patches] == [round(r["file_bytes"] / 1e6, 3) for r in table]
heights = sorted(round(p.get_height(), 3) for p in ax_speed.patches)
assert heights == sorted(round(r[k], 3) for r in table for k in ("decode_tok_s", "roofline_tok_s"))
"""),
    ],
    "03_inside_ternary": [
        ("E = read_matrix(\"token_embd.weight\")", """
assert W.shape == (1536, 576) and E.shape == (49152, 576)
"""),
        ("T = q_t.ternary_values()", """
assert np.array_equal(T, T_ref)
assert abs(share[0] - gaussian_zeros) < 0.05 and abs(share[-1] - share[1]) < 0.05
"""),
        ("quantized = {f: ternlm.quantize(W, f) for f in formats}", """
assert sizes["ternary"] < sizes["int4"] < sizes["bf16"] < sizes["f32"] == W.nbytes
packed = quantized["ternary"].buffers()["packed"]            # 4 weights per byte, 16-row tiles
assert packed.size * 4 == 1536 * 576                          # 1536 rows and 576 columns need no padding
assert quantized["ternary"].bits_per_weight == (2 * 576 * 1536 + 32 * 1536) / W.size
assert quantized["bf16"].bits_per_weight == 16.0
"""),
        ("errors[name, f] = (rel(q.dequantize(), M)", """
assert errors["W (Q4_1)", "int4"][0] < 1e-6                      # Q4_1 -> INT4 is lossless
for i in (0, 1):
    assert errors["E (Q8_0)", "bf16"][i] < errors["E (Q8_0)", "int4"][i] < errors["E (Q8_0)", "ternary"][i]
assert errors["E (Q8_0)", "bf16"][0] < 0.005 and errors["E (Q8_0)", "ternary"][0] > 0.3
"""),
        ("head = {f: ternlm.quantize(E, f)", """
for f, q in head.items():
    y = ternlm.matmul(x, q)
    assert rel(y, E @ x) < {"bf16": 0.01, "int4": 0.2, "ternary": 1.0}[f]
"""),
        ("roofline = {f: bandwidth * 1e9 / b", """
assert len(layer_shapes) == 30 * 7
assert roofline["ternary"] > roofline["int4"] > roofline["bf16"]
assert per_token["bf16"] == 2 * sum(a * b for a, b in layer_shapes) + head_bytes + norm_bytes
"""),
    ],
}


def with_checks(nb, stem):
    """nb with each check cell inserted after the first code cell holding its anchor line."""
    cells = list(nb.cells)
    for anchor, check in CHECKS.get(stem, []):
        at = next((i for i, c in enumerate(cells) if c.cell_type == "code" and anchor in c.source), None)
        assert at is not None, f"{stem}: no code cell contains {anchor!r} (the notebook changed: update CHECKS)"
        cells.insert(at + 1, nbformat.v4.new_code_cell(check.strip()))
    nb.cells = cells
    return nb


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_compare_formats.ipynb",
                                           "03_inside_ternary.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} cell {i} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_cells_teach_and_the_test_checks(path):
    """No assert in the notebooks themselves: their checks live in CHECKS."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not any(line.lstrip().startswith("assert") for line in cell.source.splitlines()), \
                f"{path.name} cell {i} asserts: move the check into tests/test_notebooks.py CHECKS"
    assert CHECKS[path.stem]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    import ternlm
    # The kernel runs in the notebooks folder: give it absolute paths to this ternlm.
    pkg_parent = str(Path(ternlm.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if os.environ.get("TERNLM_CORE_DIR"):
        monkeypatch.setenv("TERNLM_CORE_DIR", str(Path(os.environ["TERNLM_CORE_DIR"]).resolve()))
    nb = with_checks(nbformat.read(path, as_version=4), path.stem)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()      # raises CellExecutionError with the failing cell's traceback
    # No tqdm bar may fall back to "IProgress not found" (ipywidgets is optional).
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert "IProgress not found" not in str(out.get("text", "")), out
