"""Third-party output kept out of kdpipe's own, in one place: every CLI command runs inside
`captured()`, and `kdpipe --verbose` turns it off.

Exporters and runtimes print much that is not about the user's run: coremltools' scikit-learn and
torch-version notices and, off macOS, eight "Failed to load _MLModelProxy" lines; tqdm bars of
its conversion passes; ExecuTorch's C++ cpuinfo and threadpool lines; torch's deprecation logs.
While `captured()` runs, a temporary file takes:

- `sys.stderr` (tqdm bars, `print(..., file=sys.stderr)`, logging's last-resort handler) and
  Python warnings of any category not defined in kdpipe;
- the records of the libraries in `LIBRARY_LOGGERS`, at WARNING and above, instead of their
  propagating (a test's captured log stays readable too);
- inside `native_stderr()` only, file descriptor 2 itself: what C and C++ code writes, and
  torch's log handler. Only around library work (an export, a bench), because kdpipe writes to
  fd 2 too: the trainer's Ctrl-C notice is an `os.write(2, ...)` from a signal handler.

kdpipe's console keeps writing where stderr went before (a duplicate of fd 2 when that was the
terminal), and kdpipe's own loggers print through it, so kdpipe's messages, warnings and errors
still show. The file is thrown away when the command succeeds and replayed, under a header, when
it fails.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

from kdpipe.progress import console

# Pure-Python libraries that log notices about themselves (version checks, missing native parts,
# per-pass debug lines). Torch's own log handler writes to file descriptor 2 (`native_stderr`).
LIBRARY_LOGGERS = ("coremltools", "executorch", "torchao", "torch.__trace", "onnxscript",
                   "onnx_ir", "pydot", "litert_torch", "ai_edge_torch", "nncf", "openvino",
                   "absl", "tensorflow", "jax")
REPLAY_HEADER = "third-party output of the failed command (shown with --verbose always):"

_verbose = False
_active: Capture | None = None
_native_depth = 0  # nested native_stderr() blocks: only the outermost redirects fd 2


def set_verbose(on: bool) -> None:
    """`kdpipe --verbose`: let libraries print as they like (no capture)."""
    global _verbose
    _verbose = on


class Capture:
    """The temporary file that holds third-party output while `captured()` runs."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        # A text stream over a duplicate of the file's descriptor: both share one offset, so
        # Python-level and C-level writes interleave in the order they happened.
        self.stream: TextIO = open(os.dup(self._file.fileno()), "w", buffering=1,  # noqa: SIM115
                                   encoding="utf-8", errors="backslashreplace")

    def text(self) -> str:
        """Everything captured so far."""
        self.stream.flush()
        os.lseek(self._file.fileno(), 0, os.SEEK_SET)
        data = os.read(self._file.fileno(), os.fstat(self._file.fileno()).st_size)
        os.lseek(self._file.fileno(), 0, os.SEEK_END)
        return data.decode("utf-8", errors="backslashreplace")

    def close(self) -> None:
        self.stream.close()
        self._file.close()


@contextlib.contextmanager
def captured() -> Iterator[Capture | None]:
    """Hold third-party output for the length of the block (see the module docstring); replay
    it when the block fails. Yields None (capturing nothing) with --verbose, and the outer
    capture when one is already running."""
    global _active
    if _verbose or _active is not None:
        yield _active
        return
    capture = Capture()
    _active = capture
    failed = False
    try:
        with _stderr_to(capture), _library_logs_to(capture), _warnings_to(capture):
            yield capture
    except BaseException as e:
        failed = not _is_success(e)
        raise
    finally:
        _active = None
        text = capture.text()
        capture.close()
        if failed and text.strip():
            console.print(REPLAY_HEADER, style="dim", highlight=False)
            console.file.write(text if text.endswith("\n") else text + "\n")
            console.file.flush()


@contextlib.contextmanager
def native_stderr() -> Iterator[None]:
    """File descriptor 2 into the running capture for the block: around library work whose C/C++
    code writes to stderr (ExecuTorch's cpuinfo and threadpool lines). Nothing happens with
    --verbose, outside `captured()` (a Python API caller keeps the library's output), or where
    the process has no fd 2."""
    global _native_depth
    if _verbose or _active is None or _native_depth:
        yield
        return
    saved = _dup_stderr_fd()
    if saved is None:
        yield
        return
    _flush(sys.__stderr__)
    os.dup2(_active.stream.fileno(), 2)
    _native_depth += 1
    try:
        yield
    finally:
        _native_depth -= 1
        _flush(sys.stderr)
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def library_stdout() -> Iterator[None]:
    """A library call's Python-level stdout (a quantizer's or converter's progress prints) into
    the running capture, or dropped when none runs; shown with --verbose. For exporters to wrap
    such calls: `captured()` leaves stdout alone, which `kdpipe list` and scripts read."""
    if _verbose:
        yield
        return
    with contextlib.redirect_stdout(_active.stream if _active is not None else io.StringIO()):
        yield


def _is_success(e: BaseException) -> bool:
    """A clean exit (`typer.Exit(0)`, `sys.exit(0)`) or Ctrl-C, which says nothing of the
    libraries: nothing to replay."""
    if isinstance(e, KeyboardInterrupt):
        return True
    if isinstance(e, SystemExit):
        return e.code in (0, None)
    return getattr(e, "exit_code", None) == 0  # click's and typer's Exit


@contextlib.contextmanager
def _stderr_to(capture: Capture) -> Iterator[None]:
    """`sys.stderr` into the capture; kdpipe's console on where stderr went before."""
    previous = sys.stderr
    own: TextIO = previous
    saved_fd = _dup_stderr_fd() if _fileno(previous) == 2 else None
    if saved_fd is not None:
        # Through a duplicate, the terminal stays reachable while `native_stderr` moves fd 2.
        own = open(saved_fd, "w", buffering=1,  # noqa: SIM115
                   encoding=getattr(previous, "encoding", None) or "utf-8",
                   errors="backslashreplace")
    console_file = getattr(console, "_file", None)
    console.file = own
    kdpipe_log = _KdpipeLogHandler()
    logging.getLogger("kdpipe").addHandler(kdpipe_log)
    _flush(previous)
    sys.stderr = capture.stream
    try:
        yield
    finally:
        _flush(sys.stderr)
        sys.stderr = previous
        logging.getLogger("kdpipe").removeHandler(kdpipe_log)
        console.file = console_file
        if own is not previous:
            own.close()


def _dup_stderr_fd() -> int | None:
    """A duplicate of file descriptor 2, or None where there is none (a GUI-less Windows app)."""
    try:
        return os.dup(2)
    except OSError:
        return None


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _flush(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.flush()


class _KdpipeLogHandler(logging.Handler):
    """kdpipe's own WARNING and ERROR records on kdpipe's console (logging's last-resort handler
    would write them into the capture)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(self.format(record), highlight=False, markup=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def _library_logs_to(capture: Capture) -> Iterator[None]:
    """`LIBRARY_LOGGERS` at WARNING at least, written into the capture, not propagated."""
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    names = [n for n in LIBRARY_LOGGERS
             if not (n == "torch.__trace" and os.environ.get("TORCH_TRACE"))]
    saved = []
    for name in names:
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.setLevel(max(log.level, logging.WARNING))
        log.propagate = False
        log.addHandler(handler)
    try:
        yield
    finally:
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate


@contextlib.contextmanager
def _warnings_to(capture: Capture) -> Iterator[None]:
    """Warnings into the capture, but for kdpipe's own (a category defined in kdpipe). A file
    name does not tell: torch attributes its deprecation and tracer warnings to the caller, often
    a kdpipe module."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if category.__module__.partition(".")[0] == "kdpipe":
                shown(message, category, filename, lineno, file, line)
            else:
                capture.stream.write(warnings.formatwarning(message, category, filename, lineno,
                                                            line))

        warnings.showwarning = show
        yield
