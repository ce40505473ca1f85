"""`kdpipe deploy`: a folder with everything an app needs for one exported artifact.

    out/
      model.onnx          the artifact (a folder for .mlpackage)
      model.onnx.json     its metadata (classes, input, preprocessing, quantization, ...)
      labels.txt          class names, line i = output i
      predict.py          the usage snippet (Classify.swift for Core ML)
      README.md           what the files are, the input the model expects, and the snippet

The folder is built beside `out` and renamed into place, so an app never picks up half a bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kdpipe.atomic import atomic_path
from kdpipe.deploy.snippets import SNIPPETS, Snippets
from kdpipe.errors import KdpipeError
from kdpipe.export.metadata import artifact_sha256, companion_files, path_size
from kdpipe.progress import console
from kdpipe.runtime import Runtime, runtimes_for
from kdpipe.runtime.artifact import CHECKPOINT, Artifact, open_artifact, sidecar_path

SNIPPET_FILES = {"python": "predict.py", "swift": "Classify.swift"}
MARKER = "labels.txt"  # every bundle has it; a folder without it is not ours to replace


def build_bundle(path: str | Path, out: str | Path) -> Path:
    """Bundle the artifact at `path` into the folder `out` (replacing an earlier bundle there)."""
    artifact = open_artifact(path)
    runtime = snippet_runtime(artifact)
    out = Path(out)
    _check_intact(artifact)
    _check_replaceable(out)
    snippets = SNIPPETS.get(runtime.name)(artifact)
    snippet_file = SNIPPET_FILES[snippets.language]
    warning = mobile_warning(artifact) if snippets.apps else ""
    if warning:
        console.print(f"warning: {warning}", highlight=False)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        _copy(artifact.path, tmp / artifact.name)
        for companion in companion_files(artifact.path):  # an OpenVINO/ncnn file's weights
            _copy(companion, tmp / companion.name)
        _write_metadata(artifact, tmp / sidecar_path(Path(artifact.name)).name)
        (tmp / "labels.txt").write_text("\n".join(artifact.classes) + "\n", encoding="utf-8")
        (tmp / snippet_file).write_text(snippets.text, encoding="utf-8")
        for name, text in snippets.apps.items():
            (tmp / name).write_text(text, encoding="utf-8")
        text = (readme(artifact, runtime, snippets, snippet_file)
                + app_section(snippets.apps, warning))
        (tmp / "README.md").write_text(text, encoding="utf-8")
    return out


def mobile_warning(artifact: Artifact) -> str:
    """Why a phone's accelerators would not take this file, or "" when they can."""
    if artifact.batch_sizes == (1,):
        return ""
    if artifact.batch_sizes:  # a static shape of another batch size (LiteRT, Core ML)
        return (f"{artifact.name} takes exactly {artifact.batch_sizes[0]} images per call; an "
                "app classifying one image at a time should bundle the batch-1 file "
                "(export with --batch-sizes 1)")
    usability = artifact.metadata.get("details", {}).get("mobile_usability", {})
    nnapi = usability.get("NNAPI")
    taken = f" (NNAPI takes {nnapi['supported']} of its {nnapi['nodes']} nodes)" if nnapi else ""
    return (f"{artifact.name} has a dynamic batch dimension{taken}: on a phone ONNX Runtime's "
            "NNAPI and Core ML providers need a static shape; export it with --batch-sizes 1 "
            "and bundle that file")


def app_section(apps: dict[str, str], warning: str) -> str:
    """The README part for the phone-app snippets."""
    if not apps:
        return ""
    lines = ["", "## In a phone app", ""]
    lines += [f"> {warning}", ""] if warning else []
    for name, text in apps.items():
        language = {".kt": "kotlin", ".ts": "typescript"}.get(Path(name).suffix, "")
        lines += [f"`{name}`:", "", f"```{language}", text.rstrip(), "```", ""]
    return "\n".join(lines)


def snippet_runtime(artifact: Artifact) -> Runtime:
    """The runtime an app would use for this format: the first one with a usage snippet."""
    if artifact.format == CHECKPOINT:
        raise KdpipeError(f"{artifact.path} is a training checkpoint, not an app artifact; export "
                          "it first (kdpipe export), then deploy the exported file")
    for runtime in runtimes_for(artifact):
        if runtime.name in SNIPPETS:
            return runtime
    raise KdpipeError(f"no runtime has a usage snippet for {artifact.format} files")


def readme(artifact: Artifact, runtime: Runtime, snippets: Snippets, snippet_file: str) -> str:
    """The bundle's README: files, input contract, output, and the snippet."""
    c, h, w = artifact.input_shape
    batches = (f"batch sizes {list(artifact.batch_sizes)} only" if artifact.batch_sizes
               else "any batch size" + (f" up to {artifact.max_batch_size}"
                                        if artifact.max_batch_size else ""))
    if artifact.mean is None:
        prep = "normalization is folded into the model: pass plain [0, 1] pixels, no mean/std"
    else:
        prep = (f"then normalize per channel: (x - mean) / std with mean {list(artifact.mean)}, "
                f"std {list(artifact.std or ())}")
    language, snippet = snippets.language, snippets.text
    run_hint = (f"`python {snippet_file} image.jpg` prints the label (needs numpy, Pillow and "
                f"{runtime.package})" if language == "python"
                else f"add {artifact.name} and labels.txt to the Xcode target; call "
                     "`classify(image)` from your app")
    metadata_row = (f"| `{sidecar_path(Path(artifact.name)).name}` | its metadata (classes, "
                    "input, preprocessing) |")
    return f"""# {artifact.model or artifact.path.stem} for {runtime.name}

| file | what |
|---|---|
| `{artifact.name}` | the model: {artifact.format}, {artifact.quantization} |
{companion_rows(artifact)}{metadata_row}
| `labels.txt` | the {len(artifact.classes)} class names; line i is output i |
| `{snippet_file}` | the usage example below |

**Input**: float32 RGB, NCHW, shape [N, {c}, {h}, {w}] ({batches}). Resize the image to
{w}x{h}, scale pixels to [0, 1]; {prep}.

**Output**: logits [N, {len(artifact.classes)}]; the argmax is the index of the label in
`labels.txt`.

## Usage ({language})

{run_hint}.

```{language}
{snippet.rstrip()}
```
"""


def companion_rows(artifact: Artifact) -> str:
    """README table rows for the files that must travel with the artifact (its weights)."""
    return "".join(f"| `{p.name}` | its weights, loaded from beside `{artifact.name}` |\n"
                   for p in companion_files(artifact.path))


def _write_metadata(artifact: Artifact, dest: Path) -> None:
    """The sidecar as export wrote it; else (metadata embedded in the file) as read."""
    if sidecar_path(artifact.path).is_file():
        shutil.copy2(sidecar_path(artifact.path), dest)
    else:
        dest.write_text(json.dumps(artifact.metadata, indent=2, default=str) + "\n",
                        encoding="utf-8")


def _copy(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy2(src, dest)


def _check_intact(artifact: Artifact) -> None:
    """Refuse a file that is not the one its sidecar describes (cut short by a full disk or a
    broken copy, or replaced): an app would ship it and fail on the phone."""
    if not sidecar_path(artifact.path).is_file():
        return  # metadata embedded in the file itself: no size or hash to hold it to
    size, sha = artifact.metadata.get("size_bytes"), artifact.metadata.get("sha256")
    sidecar = sidecar_path(artifact.path).name
    again = "re-export it or copy it again, with its sidecar"
    if size and path_size(artifact.path) != size:
        raise KdpipeError(f"{artifact.path} is {path_size(artifact.path)} bytes but {sidecar} "
                          f"says {size}: the file is truncated or not the one exported; {again}")
    if sha and artifact_sha256(artifact.path) != sha:
        raise KdpipeError(f"{artifact.path} does not match the sha256 in {sidecar}: the file is "
                          f"damaged or not the one exported; {again}")


def _check_replaceable(out: Path) -> None:
    """Refuse to replace a folder that holds something other than an earlier bundle."""
    if out.is_file():
        raise KdpipeError(f"--out {out} is a file; pass a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise KdpipeError(f"--out {out} is a folder that is not a kdpipe bundle; choose an empty "
                          "or new folder (kdpipe replaces the whole folder)")
