"""Helpers the distillation tests share: the tiny teacher and one-thread fixtures, the student's exact logits, the comparison of two
logit arrays with the BitNet tests' int8-tie tolerance, random token sequences."""
import numpy as np
import pytest
from conftest import CORPUS, LLAMA_VARIANTS, write_llama

# fast settings for ternlm.distill on the tiny teacher
FAST = dict(batch_size=4, seq_len=32, device="cpu", eval_text=" ".join(CORPUS[:8]), log=None, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is ~20x faster than two on a busy machine (no
    waiting for a descheduled worker in every small matmul)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("teacher"), seed=3, **LLAMA_VARIANTS["gqa_f32"])


def _compare(ours, ref):
    """Logits within 2e-2 of max|logit| with argmax agreement >= 95% (int8 activation ties);
    -> True if they also agree to float precision."""
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ours - ref).max()) / scale
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    print(f"max |diff| / max|logit| = {diff:.2e}, argmax agreement {agree:.3f}")
    assert diff < 2e-2 and agree >= 0.95
    return diff < 1e-5


def _student_logits(student, ids):
    """The student's logits [len(ids), vocab] in its exact integer forward."""
    import torch
    student.set_exact(True)
    try:
        with torch.no_grad():
            return student(torch.tensor([ids]))[0].float().numpy()
    finally:
        student.set_exact(False)


def _sequences(vocab, seed, count=4, n=24):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, n).tolist() for _ in range(count)]
