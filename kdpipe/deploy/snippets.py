"""The Python usage snippets of `kdpipe deploy`: one shape for every runtime.

Each reads an image file, converts it to RGB, resizes it to the model's size, makes a float32
NCHW batch in [0, 1] (plus mean/std only for files that do not fold normalization in), runs the
runtime, and prints the label of the argmax.
"""

from __future__ import annotations

from kdpipe.deploy.artifact import Artifact


def python_snippet(artifact: Artifact, imports: list[str], run: str) -> str:
    """The whole script: `imports` are the runtime's, `run` turns `x` into `logits` (numpy)."""
    _, height, width = artifact.input_shape
    lines = [
        '"""Classify one image: python predict.py IMAGE"""',
        "import sys",
        "",
        *sorted(["import numpy as np", "from PIL import Image", *imports],
                key=lambda line: line.split()[1].lower()),  # by module, as isort orders them
        "",
        'labels = open("labels.txt", encoding="utf-8").read().splitlines()',
        f'image = Image.open(sys.argv[1]).convert("RGB").resize(({width}, {height}), '
        "Image.BILINEAR)",
        "# HWC uint8 -> NCHW float32 in [0, 1], a batch of one: the input the model expects",
        "x = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] "
        "/ 255.0)",
    ]
    if artifact.mean is not None and artifact.std is not None:
        lines += [
            "# this file expects normalized input (normalization is not folded into it)",
            f"mean = np.array({list(artifact.mean)}, dtype=np.float32).reshape(1, 3, 1, 1)",
            f"std = np.array({list(artifact.std)}, dtype=np.float32).reshape(1, 3, 1, 1)",
            "x = (x - mean) / std",
        ]
    lines += ["", run.rstrip(), "print(labels[int(np.argmax(logits, axis=1)[0])])"]
    return "\n".join(lines) + "\n"
