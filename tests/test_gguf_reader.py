"""ternlm's GGUF container reader against the gguf package's GGUFReader, and its checks on
damaged files."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from test_gguf_loader import CFG, TOK, _weights  # noqa: E402
from gguf_files import write_gguf  # noqa: E402
from ternlm.io.gguf_reader import GGUFFile  # noqa: E402


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    types = {"attn_q": "Q4_1", "attn_k": "Q8_0", "ffn_up": "TQ2_0", "ffn_down": "F16", "token_embd": "BF16"}
    path = tmp_path_factory.mktemp("reader") / "m.gguf"
    return write_gguf(path, CFG, _weights(11, types), dict(TOK, chat_template="{{ x }}"),
                      extra={"general.name": "tiny", "llama.rope.scaling.original_context_length": 64})


def test_metadata_and_tensors_equal_gguf_reader(sample):
    ours, ref = GGUFFile(sample), gguf.GGUFReader(sample)
    assert set(ours.fields) == {k for k in ref.fields if not k.startswith("GGUF.")}
    for key, value in ours.fields.items():
        want = ref.fields[key].contents()
        assert value == want or (isinstance(value, float) and np.float32(value) == np.float32(want)), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == [int(x) for x in b.shape]
        assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name


def test_damaged_files_raise_value_errors_naming_the_problem(sample, tmp_path):
    blob = open(sample, "rb").read()
    cases = {"magic": b"GGUX" + blob[4:], "truncated": blob[:200], "cut_data": blob[:-100],
             "version": blob[:4] + (7).to_bytes(4, "little") + blob[8:]}
    messages = {"magic": "not a GGUF file", "truncated": "truncated GGUF header", "cut_data": "does not fit in the file",
                "version": "GGUF version 7"}
    for name, data in cases.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(data)
        with pytest.raises(ValueError, match=messages[name]):
            GGUFFile(str(p))
