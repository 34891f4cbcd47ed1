"""Plumbing both command lines share: exit codes, one-line errors, quiet torch, safe report writes.

Exit codes keep one meaning whatever happens inside: 0 and 1 come only from a completed command
(1 is the scorer's gate), 2 from every error (usage, bad input, an exception in the user's own
code, `sys.exit` called by a factory), 130 from Ctrl-C. No traceback reaches the user without
`--debug`. Only this module and the two CLI modules print or exit.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

from micronet_score.errors import UserError

T = TypeVar("T")
EXIT_OK, EXIT_OVER_BUDGET, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str) -> NoReturn:
    error_line(message)
    raise typer.Exit(EXIT_BAD_INPUT)


def error_line(message: str) -> None:
    """`error: message` on stderr as exactly one line: characters that would break it (newlines,
    and the separators `str.splitlines` honours, from a file name or an option) are escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    typer.echo(f"error: {text}", err=True)


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, for errors that are not already written for users."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}".rstrip(": ")


def guarded(debug: bool, action: Callable[[], T]) -> T:
    """Run `action`, turning any failure into one line and exit code 2 unless --debug is given.

    A `SystemExit` raised inside (a user's factory or model code calling `sys.exit`) is an error
    too, and so is typer's or click's `Exit` or `Abort`: no action run here gives a verdict, so
    one of those can only come from the user's code. Exit codes 0 and 1 belong to a completed
    command alone; Ctrl-C goes through.
    """
    try:
        return action()
    except KeyboardInterrupt:
        raise
    except (typer.Exit, typer.Abort) as error:
        if debug:
            raise
        code = getattr(error, "exit_code", None)
        fail(f"code from the model or a factory raised {type(error).__name__}"
             f"{'' if code is None else f'({code})'}; a model must build and trace without "
             "ending the program")
    except UserError as error:
        if debug:
            raise
        fail(str(error))
    except SystemExit as error:
        if debug:
            raise
        fail(f"code from the model or a factory called sys.exit({error.code!r}); "
             "a model must build and trace without exiting the program")
    except BaseException as error:  # BaseException: user code may raise anything
        if debug:
            raise
        fail(one_line(error) + " (rerun with --debug)")


def run_app(app: typer.Typer, args: list[str], prog_name: str) -> int:
    """Run a typer app and return its exit code, whatever happens inside.

    Usage errors and every exception that escaped `guarded` (even one raised while printing)
    give 2 and one line on stderr, or the traceback with --debug; Ctrl-C gives 130.
    """
    debug = "--debug" in args
    try:
        code: object = app(args, prog_name=prog_name, standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away: nothing more to say, and no verdict
        _silence_stdout()
        return EXIT_BAD_INPUT
    except SystemExit as error:
        if isinstance(error.__context__, BrokenPipeError):  # typer exits 1 on a closed pipe
            _silence_stdout()
            return EXIT_BAD_INPUT
        if debug:
            raise
        error_line(f"unexpected exit ({error.code!r})")
        return EXIT_BAD_INPUT
    except BaseException as error:
        usage = getattr(error, "format_message", None)  # click's usage errors, in its own words
        if type(error).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help itself
            typer.echo(str(usage() if callable(usage) else error).rstrip(), err=True)
            return EXIT_BAD_INPUT
        if callable(usage):
            error_line(f"{usage()} (see '{prog_name} --help')")
            return EXIT_BAD_INPUT
        if debug:
            raise
        error_line(f"{one_line(error)} (rerun with --debug)")
        return EXIT_BAD_INPUT
    return code if isinstance(code, int) else EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit cannot raise a second time."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def torch_quiet(debug: bool) -> Iterator[list[str]]:
    """Hide torch's warnings and log messages while models load and trace.

    A damaged `.pt2` makes torch log dozens of lines, and quantized models raise deprecation
    warnings; the user gets one-line errors and a one-line note instead. Yields a list that holds
    one note line afterwards when anything was hidden. With `debug`, nothing is hidden.
    """
    notes: list[str] = []
    if debug:
        yield notes
        return
    import logging
    import warnings

    previous = logging.root.manager.disable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logging.disable(logging.CRITICAL)
        try:
            yield notes
        finally:
            logging.disable(previous)
    if caught:
        kinds = sorted({w.category.__name__ for w in caught})
        notes.append(f"note: {len(caught)} warning(s) from torch or the model's code hidden "
                     f"({', '.join(kinds)}); rerun with --debug to see them")


def parse_json_object(text: str | None, option: str) -> dict[str, Any]:
    """The keyword arguments an option such as --arch-kwargs gives as a JSON object."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        message = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        raise UserError(f"{option} is not valid JSON ({message}): {text[:80]}") from error
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object, e.g. '{{\"growth_rate\": 4}}'")
    return value


def input_files(specs: Iterable[str | None]) -> list[Path]:
    """The existing files among model paths, factory specs (`file.py:fn`), rule and baseline
    paths."""
    files = []
    for spec in specs:
        if not spec:
            continue
        for candidate in (spec, spec.rpartition(":")[0]):
            if candidate and Path(candidate).is_file():
                files.append(Path(candidate))
                break
    return files


def refuse_overwriting_inputs(output: Path | None, inputs: Iterable[Path]) -> None:
    """--output may not name a file the command reads: a report would replace the model."""
    if output is None or not output.exists():
        return
    for source in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(output, source):
                raise UserError(
                    f"--output {output} is an input of this command ({source}); "
                    "write the report to another file"
                )


def check_writable(output: Path | None) -> None:
    """Before any work: `write_report` will be able to write `output` (it is no folder, and its
    folder exists and takes new files; a device must be writable). Raises UserError."""
    if output is None:
        return
    target = output.resolve() if output.is_symlink() else output
    if target.is_dir():
        raise UserError(f"cannot write {output}: it is a folder; give a file name")
    if target.exists() and not target.is_file():  # a terminal, a pipe: written directly
        if not os.access(target, os.W_OK):
            raise UserError(f"cannot write {output}: {os.strerror(errno.EACCES)}")
        return
    folder = target.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {output}: {os.strerror(errno.ENOENT)} "
                        f"(no folder {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):  # the new file is made in the folder
        raise UserError(f"cannot write {output}: {os.strerror(errno.EACCES)} (folder {folder})")


def write_report(output: Path, text: str) -> None:
    """Write `text` to `output` atomically: a failed write leaves the old file as it was.

    The text goes to a temporary file beside the target, then replaces it in one rename; the
    file keeps the old file's permissions, or gets the usual ones (0666 less the umask). A
    target that exists and is no regular file (a terminal, a pipe) is written directly.
    Raises UserError with the reason when the file cannot be written.
    """
    target = output.resolve() if output.is_symlink() else output
    if target.exists() and not target.is_file():
        if target.is_dir():
            raise UserError(f"cannot write {output}: it is a folder; give a file name")
        try:
            with open(target, "w", encoding="utf-8") as stream:
                stream.write(text)
        except OSError as error:
            raise UserError(f"cannot write {output}: {error.strerror or error}") from error
        return
    temporary = None
    try:
        mode = target.stat().st_mode & 0o777 if target.exists() else _default_mode()
        handle, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except OSError as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise UserError(f"cannot write {output}: {error.strerror or error}") from error


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
