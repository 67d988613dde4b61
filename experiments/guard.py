"""How every experiment command fails: one line on stderr and an exit status, never a traceback.

Bad input is exit 2 (argparse's status), checked before anything is written: flags, paths,
environment, data. A run that fails on the way (a full disk, a damaged run directory, a NaN loss)
is one line and exit 2 as well, and rerunning resumes it. Ctrl-C is a clean stop, exit 130.
Anything else is a bug: one line naming what failed and where its traceback was saved, exit 1
(:func:`command` around ``main`` and :func:`guarded` around the run).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

import jax

from ap_jax import checkpoint, cycle, data, records

RUN_ERRORS = (cycle.RunDirError, cycle.NonFiniteLoss, records.RecordsError, checkpoint.CheckpointError)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
TRACEBACK_PREFIX = "traceback-"


def interrupted(prog: str) -> int:
    """Ctrl-C: say how to go on, exit 130 (128 + SIGINT)."""
    print(f"{prog}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
    return 130


def exit_process(code: int) -> None:
    """End a command's process with ``code``. After Ctrl-C (130) it ends at once, its output
    flushed: every file is already written atomically, and the interpreter's shutdown could meet
    background threads (XLA's, orbax's) stopped mid-operation, which can crash it."""
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def save_traceback(where: Path | None) -> Path:
    """Write the exception being handled, with its traceback, to a new file in ``where`` (a run
    directory) or, when that is not a directory, in the temp directory; return the file."""
    text = traceback.format_exc()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if where is not None and where.is_dir():
        try:
            path = where / f"{TRACEBACK_PREFIX}{stamp}-{os.getpid()}.txt"
            path.write_text(text)
            return path
        except OSError:
            pass
    handle, name = tempfile.mkstemp(prefix=f"ap_jax-{TRACEBACK_PREFIX}{stamp}-", suffix=".txt")
    with os.fdopen(handle, "w") as f:
        f.write(text)
    return Path(name)


def internal_error(prog: str, err: BaseException, where: Path | None) -> int:
    """An unexpected exception: one line naming it and the file holding its traceback, exit 1."""
    path = save_traceback(where)
    print(f"{prog}: internal error: {checkpoint.one_line(err, 200)} (the traceback is in {path}; "
          "please report it)", file=sys.stderr)
    return 1


def command(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate an experiment's ``main``: Ctrl-C is exit 130, an unexpected exception exit 1 with
    one line (see :func:`internal_error`); argparse's exits pass through."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                return interrupted(prog)
            except Exception as err:
                return internal_error(prog, err, None)
        return run
    return wrap


def guarded(parser: argparse.ArgumentParser, body: Callable[[], None], out: Path,
            also: tuple[type[Exception], ...] = ()) -> int:
    """Run an experiment's ``body`` and turn its failures into one line and an exit code.

    0 when it returns; 130 on Ctrl-C (rerun to resume); the usage error (2) for a dataset that
    cannot be read; 2 with ``error: ...`` for a bad run directory, checkpoint or records, a
    non-finite loss, a failed write under ``out``, a device failure (out of memory), or any of
    ``also``; 1 for anything else, its traceback saved in ``out``. Exceptions raised in
    background threads (orbax's) while it runs go to that file too, not to the terminal.
    """
    try:
        with background_errors_to_file(out):
            body()
    except KeyboardInterrupt:
        return interrupted(parser.prog)
    except data.DataError as err:
        parser.error(str(err))
    except RUN_ERRORS + also as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{parser.prog}: error: {_file_failure(err, out)}", file=sys.stderr)
        return 2
    except jax.errors.JaxRuntimeError as err:
        print(f"{parser.prog}: error: {str(err).splitlines()[0]}; if the device ran out of memory, lower "
              "--batch-size or --eval-batch-size or pass more --devices, then rerun the same command to "
              "resume", file=sys.stderr)
        return 2
    except Exception as err:
        return internal_error(parser.prog, err, out)
    return 0


@contextlib.contextmanager
def background_errors_to_file(out: Path) -> Iterator[None]:
    """Send exceptions that no caller can catch to a traceback file in ``out`` instead of the
    terminal: a thread's (orbax's, after Ctrl-C), an ignored one in a coroutine collected late, one
    a native callback prints (tensorstore's reads of a corrupt checkpoint that orbax has already
    given up on). The run has its own outcome; these are noise beside it, kept for a bug report."""
    caught: list[tuple] = []
    hooks = threading.excepthook, sys.unraisablehook, sys.excepthook
    threading.excepthook = sys.unraisablehook = lambda e: caught.append((e.exc_type, e.exc_value, e.exc_traceback))
    sys.excepthook = lambda *exc: caught.append(exc)
    try:
        yield
    finally:
        threading.excepthook, sys.unraisablehook, sys.excepthook = hooks
        if caught:
            _save_background(caught, out)


def _save_background(caught: list[tuple], out: Path) -> None:
    text = "".join("".join(traceback.format_exception(*exc)) for exc in caught)
    where = out if out.is_dir() else Path(tempfile.gettempdir())
    try:
        (where / f"{TRACEBACK_PREFIX}background-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt").write_text(text)
    except OSError:
        pass


def _file_failure(err: OSError, out: Path) -> str:
    """One line for a failed file operation: a full or read-only disk is a failed write under
    ``out``; anything else names the file and the operating system's reason."""
    where, why = err.filename or out, err.strerror or err
    if err.errno in WRITE_ERRNOS:
        return (f"cannot write {where}: {why}; free space or pass another --out, then rerun the same "
                "command to resume")
    return f"{where}: {why}; fix or remove that file, then rerun the same command to resume"


def file_problem(err: OSError) -> str:
    """One line for a file that could not be looked at before anything started."""
    return f"{err.filename}: {err.strerror or err}" if err.filename else str(err)


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Inside the block (a command's checks before it starts), a ``ValueError`` (a bad config,
    data or run directory) or a path that cannot be looked at ends the command as argparse
    does: one line and exit 2."""
    try:
        yield
    except ValueError as err:
        parser.error(str(err))
    except OSError as err:  # no permission, a name too long
        parser.error(file_problem(err))


def make_dir(path: Path, flag: str = "--out") -> None:
    """Create ``path`` (the first write of a command) or raise ``ValueError``: nothing was started,
    so the fix is another ``flag``, not a rerun."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {path}: {err.strerror or err}; pass a writable {flag}") from None


def check_path_text(text: str | None, flag: str) -> None:
    """Raise ``ValueError`` unless a path flag's text can name a file: not empty, no NUL byte, no
    name longer than the file system takes."""
    if text is None:
        return
    if not text.strip():
        raise ValueError(f"{flag} must not be empty: pass a path")
    if "\0" in text:
        raise ValueError(f"{flag} must not hold a NUL byte, got {text!r}")
    if problem := _name_problem(Path(text)):
        raise ValueError(f"{flag} {_short(Path(text))}: {problem}")


def check_out(out: Path, flag: str = "--out") -> None:
    """Raise ``ValueError`` (the message says the fix: another ``flag``) unless ``out`` is, or can
    be created as, a writable directory whose name the file system accepts.

    Checked before the data is loaded, and without writing anything.
    """
    if problem := _name_problem(out) or _directory_problem(out):
        raise ValueError(f"cannot write to {_short(out)}: {problem}; pass a writable {flag}")


def _short(path: Path, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _name_problem(path: Path) -> str | None:
    """Why the file system cannot hold ``path`` (a name or the whole path too long), or None."""
    limit = os.pathconf("/", "PC_NAME_MAX")
    if long := next((p for p in path.parts if len(os.fsencode(p)) > limit), None):
        return f"a name in it is {len(os.fsencode(long))} bytes, longer than the {limit} allowed"
    if len(os.fsencode(str(path.absolute()))) >= os.pathconf("/", "PC_PATH_MAX"):
        return "the path is longer than the file system allows"
    return None


def _directory_problem(out: Path) -> str | None:
    """Why ``out`` cannot be a writable directory, judged by its nearest existing ancestor, or None."""
    existing = out
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as err:
        return f"{existing}: {err.strerror or err}"
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_file_target(path: Path, flag: str) -> None:
    """Raise ``ValueError`` unless ``path`` can be written as a file (a name the file system takes,
    not a directory, in a writable directory)."""
    if problem := _name_problem(path):
        raise ValueError(f"cannot write {_short(path)}: {problem}; pass another {flag}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; pass a file path, e.g. {path / 'REPRODUCTION.md'}")
    check_out(path.parent, flag)
