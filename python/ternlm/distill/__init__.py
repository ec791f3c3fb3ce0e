"""ternlm.distill: make a ternary (BitNet b1.58) model from any model ternlm loads, by
quantization-aware distillation.

    result = ternlm.distill("teacher.gguf", "out/", steps=2000)    # needs ternlm[train] (torch)
    m = ternlm.load("out/")

Modules (torch is imported only when a distillation runs; `import ternlm` never needs it):
    student.py   the teacher's architecture in torch with BitLinear layers (STE, λ blending)
    teacher.py   teacher weights as float32 (ternlm's readers; a numpy-only GGUF path)
    data.py      text files / iterables, or data-free teacher samples
    train.py     the loop: KL to the teacher (+ CE), λ and LR schedules, checkpoints, perplexity
    export.py    the Hugging Face folder (quantization_config bitnet), optionally a ternlm folder
    api.py       ternlm.distill();  cli.py: `ternlm distill`
"""
from .api import DistillResult, distill  # noqa: F401
