"""Helpers the distillation tests share: the student's exact logits, the comparison of two
logit arrays with the BitNet tests' int8-tie tolerance, random token sequences."""
import numpy as np


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
