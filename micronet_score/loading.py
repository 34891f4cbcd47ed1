"""Load what the user points at: an exported program, a pickle, a state_dict, or a factory.

Nothing from a file runs unless the user passes `trust=True`: a `.pt2` goes through the checked
reader in `pt2.py`, pickles are opened with `weights_only=True` (a refused global is named). A
path that is no regular file is read into a bounded copy first. `pkg.mod:function` factories
and --trust pickles also find modules in the current folder, after the installed packages. Every
failure becomes one UserError line saying what to do.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from micronet_score.errors import UserError
from micronet_score.graph import inline_subgraphs
from micronet_score.limits import MAX_STREAM_BYTES
from micronet_score.ops.spec import RegistrationError

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
_MAX_SOURCE_BYTES = 1 << 22  # a .py file larger than this is not parsed for its function names


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """The model to analyse, and the input shape it was recorded with (exported programs only)."""

    module: nn.Module
    recorded_shape: tuple[int, ...] | None


def load_model(
    spec: str,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust: bool = False,
) -> LoadedModel:
    path = Path(spec)
    if not path.exists():
        if _looks_like_factory(spec):
            return LoadedModel(build_from_factory(spec, arch_kwargs), None)
        raise UserError(f"model file not found: {spec}")
    if path.is_dir():
        raise UserError(f"{spec} is a folder; give a model file (.pt2, .pt, .pth)")
    if path.suffix == ".py":
        raise UserError(python_source_advice(path, spec))
    if not path.is_file():  # a pipe or a device: no size to check, so read a bounded copy
        with _bounded_copy(path) as copy:
            try:
                return load_model(str(copy), arch=arch, arch_kwargs=arch_kwargs, trust=trust)
            except UserError as error:
                raise UserError(str(error).replace(str(copy), spec)) from error
    kind = _archive_kind(path)
    if kind == "torchscript":
        raise UserError(
            f"{spec} is a TorchScript archive, which hides the module structure; "
            "export the model with torch.export.export(...) and torch.export.save(...) instead"
        )
    if kind == "export":
        _no_arch(spec, "an exported program", arch, arch_kwargs)
        return from_exported(_load_exported(path, trust))
    loaded = _load_pickle(path, trust)
    if isinstance(loaded, torch.export.ExportedProgram):
        _no_arch(spec, "an exported program", arch, arch_kwargs)
        return from_exported(loaded)
    if isinstance(loaded, nn.Module):
        _no_arch(spec, "a whole model", arch, arch_kwargs)
        return LoadedModel(loaded, None)
    state = _state_dict(loaded)
    if state is None:
        raise UserError(
            f"{spec} holds a {type(loaded).__name__}, not a model or a state_dict; "
            "save the nn.Module, its state_dict, or a torch.export program"
        )
    if arch is None:
        raise UserError(
            f"{spec} holds a state_dict (weights only); pass --arch 'file.py:function' or "
            "'package.module:function' to build the model it belongs to"
        )
    model = build_from_factory(arch, arch_kwargs)
    _load_state(model, state, spec)
    return LoadedModel(model, None)


def _no_arch(spec: str, what: str, arch: str | None, arch_kwargs: object) -> None:
    """--arch builds the model a state_dict belongs to; given with a whole model it would be
    silently ignored, and the user would believe the score is of the model it names."""
    if arch is not None or arch_kwargs:
        option = "--arch" if arch is not None else "--arch-kwargs"
        raise UserError(f"{spec} holds {what}, which needs no {option} (it is used only with a "
                        f"state_dict); drop {option}")


def from_exported(program: torch.export.ExportedProgram) -> LoadedModel:
    """The unlifted graph module, and the shape (without batch) its first input was traced at."""
    placeholders = {
        node.name: node for node in program.graph.nodes if node.op == "placeholder"
    }
    shape, ranges = None, None
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val")
        if isinstance(value, torch.Tensor):
            # A dynamic size's example value, read without `int()`: that would specialize the
            # symbol, changing the program's shape environment (the caller's object).
            shape = tuple(int(d.node.hint) if isinstance(d, torch.SymInt) else int(d)
                          for d in value.shape[1:])
            ranges = tuple(_size_range(program, d) for d in value.shape[1:])
            break
    program = inline_subgraphs(program)
    module = program.module()
    # Ours to annotate (made just now): the sizes each input dimension was exported for.
    module.meta[SIZE_RANGES] = ranges
    return LoadedModel(module, shape)


SIZE_RANGES = "micronet_score.input_size_ranges"


def _size_range(program: torch.export.ExportedProgram, size: object) -> tuple[int, int | None]:
    """(lowest, highest or None for unbounded) sizes a dimension accepts: its own size when
    it was not declared dynamic, else the range torch.export recorded for its symbol."""
    if not isinstance(size, torch.SymInt):
        return int(size), int(size)  # type: ignore[call-overload]
    # By name: the graph's symbol and the constraint's key may carry other assumptions.
    named = {str(symbol): bounds for symbol, bounds in program.range_constraints.items()}
    bounds = named.get(str(size.node.expr))
    if bounds is None:
        return 0, None
    return _bound(bounds.lower) or 0, _bound(bounds.upper)


def _bound(value: object) -> int | None:
    """A range end as an int, None for an unbounded one (sympy's oo, torch's int_oo)."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return number if abs(number) <= 2**62 else None


def _looks_like_factory(spec: str) -> bool:
    module, sep, function = spec.rpartition(":")
    return bool(sep and module and function.isidentifier())


def python_source_advice(path: Path, spec: str) -> str:
    """One line for a `.py` file given where a factory is expected: how to name one, and the
    top-level functions and classes the file defines, read with `ast` (the file is not run)."""
    advice = f"{spec} is Python source; give the factory as {spec}:function"
    try:
        if not path.is_file() or path.stat().st_size > _MAX_SOURCE_BYTES:
            return advice  # a pipe named x.py would block the read
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return advice
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    found = [f"{what} in it: {_names(names)}"
             for what, names in (("functions", functions), ("classes", classes)) if names]
    return f"{advice} ({'; '.join(found)})" if found else advice


def _names(names: list[str], most: int = 8) -> str:
    public = [n for n in names if not n.startswith("_")] or names
    more = f" and {len(public) - most} more" if len(public) > most else ""
    return ", ".join(public[:most]) + more


def build_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build a model from `file.py:function` or `package.module:function`, in eval mode."""
    if spec.endswith(".py") and Path(spec).is_file():
        raise UserError(python_source_advice(Path(spec), spec))
    if not _looks_like_factory(spec):
        raise UserError(
            f"malformed --arch '{spec}': expected 'file.py:function' or 'pkg.mod:function'"
        )
    factory = _import_factory(spec)
    try:
        model = factory(**(kwargs or {}))
    except TypeError as error:
        raise UserError(f"cannot call {spec} with {dict(kwargs or {})}: {error}") from error
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model.eval()


def import_location(location: str, what: str = "file") -> ModuleType:
    """Import `file.py` (under a private module name) or `package.module` (also from the current
    folder). Runs the module's code: only for what the user names on the command line. Raises
    UserError when it cannot be found or fails to import."""
    try:
        if location.endswith(".py"):
            file = Path(location)
            if not file.is_file():
                raise UserError(f"{what} not found: {location}")
            # A private name: a user's rich.py or yaml.py must not replace an installed package
            # that we, or the model's own code, import later.
            digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
            private = f"_micronet_factory_{digest}_{file.stem}"
            module_spec = importlib.util.spec_from_file_location(private, file)
            if module_spec is None or module_spec.loader is None:
                raise UserError(f"cannot import {location}: not a Python source file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[private] = module  # dataclasses and pickling look classes up here
            module_spec.loader.exec_module(module)
        else:
            with importable_from_cwd():
                module = importlib.import_module(location)
    except (UserError, RegistrationError):
        raise
    except Exception as error:
        raise UserError(f"cannot import '{location}': {type(error).__name__}: {error}") from error
    return module


_PLUGINS: set[str] = set()


def load_plugins(locations: Sequence[str]) -> None:
    """Import each plugin (`file.py` or `package.module`), which registers its op specs with
    `micronet_score.register_op` as it is imported. Raises UserError for a plugin that cannot be
    imported or that registers a kind or spelling twice."""
    for location in locations:
        key = str(Path(location).resolve()) if location.endswith(".py") else location
        if key in _PLUGINS:  # already registered in this process
            continue
        try:
            import_location(location, "plugin")
            _PLUGINS.add(key)
        except RegistrationError as error:
            raise UserError(f"plugin '{location}': {error}") from error


def _import_factory(spec: str) -> Callable[..., object]:
    location, _, name = spec.rpartition(":")
    module = import_location(location, "architecture file")
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"'{location}' has no callable named '{name}'"
                        f"{_shadowed(location, name, module)}")
    return factory  # type: ignore[no-any-return]


@contextlib.contextmanager
def importable_from_cwd() -> Iterator[None]:
    """Let imports find modules in the current folder, as `python -m` does but the console
    script does not, while the block runs. The folder goes at the END of `sys.path`, so that an
    installed package wins over a local file of the same name (a user's rich.py must not replace
    rich); `sys.path` is restored afterwards."""
    try:
        cwd = os.getcwd()
    except OSError:  # the folder was removed under us: nothing to add
        yield
        return
    if "" in sys.path or cwd in sys.path:
        yield
        return
    sys.path.append(cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # the user's code may have removed it already
            sys.path.remove(cwd)


def _shadowed(location: str, name: str, module: object) -> str:
    """A hint when a local file has the name of the installed module that was imported."""
    local = Path(*location.split(".")).with_suffix(".py")
    loaded_from = getattr(module, "__file__", None)
    if not local.is_file() or (loaded_from and Path(loaded_from).resolve() == local.resolve()):
        return ""
    return (f"; the installed '{location}' comes before ./{local} on the import path, "
            f"so give the file itself: {local}:{name}")


@contextlib.contextmanager
def _bounded_copy(path: Path) -> Iterator[Path]:
    """A regular-file copy of a stream, refused past MAX_STREAM_BYTES (/dev/zero never ends).

    Opened without blocking, so a named pipe with no writer reads as empty instead of hanging.
    """
    with tempfile.TemporaryDirectory(prefix="micronet-score-") as folder:
        copy = Path(folder) / (path.name or "model")
        try:
            handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(handle, True)
            with os.fdopen(handle, "rb") as stream, open(copy, "wb") as sink:
                copied = 0
                while chunk := stream.read(1 << 20):
                    copied += len(chunk)
                    if copied > MAX_STREAM_BYTES:
                        raise UserError(
                            f"{path} is not a regular file and gives more than "
                            f"{MAX_STREAM_BYTES:,} bytes; save the model to a file and score that"
                        )
                    sink.write(chunk)
        except OSError as error:
            raise UserError(f"cannot read {path}: {error.strerror or error}") from error
        if copied == 0:
            raise UserError(f"{path} gave no bytes; give a model file (.pt2, .pt, .pth)")
        yield copy


def _archive_kind(path: Path) -> str:
    """'export', 'torchscript', 'torch.save' (zip) or 'legacy' (a plain pickle).

    A `.pt2` file that is not a torch.save zip is 'export' even when damaged or not a zip at
    all, so that the .pt2 reader says what is wrong with it.
    """
    if not zipfile.is_zipfile(path):
        return "export" if path.suffix == ".pt2" else "legacy"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"cannot read {path}: the file is damaged ({error})") from error
    if any(n.endswith("/archive_format") or n.endswith("models/model.json") for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if path.suffix == ".pt2" and not any(n.endswith("/data.pkl") for n in names):
        return "export"
    return "torch.save"


def _load_exported(path: Path, trust: bool = False) -> torch.export.ExportedProgram:
    """Read a .pt2 without running anything from the file (micronet_score.pt2); with `trust`,
    hand it to torch.export.load, which may. Raises UserError (one line)."""
    from micronet_score import pt2

    return pt2.load_trusted(path) if trust else pt2.load(path)


def _load_pickle(path: Path, trust: bool) -> object:
    from micronet_score.pt2 import quiet, refused_global

    try:
        # A pickled module names its class by module path; with --trust, find it in the current
        # folder as `python -m` would (installed packages first).
        with quiet(), importable_from_cwd() if trust else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        name = None if trust else refused_global(error, _pickle_bytes(path))
        if name is not None:  # a class or function that unpickling would import and call
            raise UserError(
                f"{path} contains a pickled reference to '{name}', and unpickling it runs code "
                "from the file; pass --trust only if you trust its origin, or save a "
                "state_dict and use --arch"
            ) from error
        raise UserError(f"cannot read {path}: not a PyTorch file, or damaged") from error
    except (RuntimeError, EOFError, OSError, ModuleNotFoundError, AttributeError) as error:
        if isinstance(error, AttributeError) and "'_modules'" in str(error):
            raise UserError(
                f"{path} holds a torch.ao quantized model, which torch.load cannot rebuild "
                "(a known PyTorch limitation); score it from Python with score_model, save its "
                "state_dict and rebuild it with --arch, or quantize with PT2E and save a .pt2"
            ) from error
        if isinstance(error, ModuleNotFoundError | AttributeError):
            raise UserError(
                f"{path} needs the model's source code to load ({error}); run from a folder where "
                "it can be imported, or export the model with torch.export"
            ) from error
        raise UserError(
            f"cannot read {path}: not a valid PyTorch file, or truncated ({error})".splitlines()[0]
        ) from error
    except Exception as error:  # a non-pickle fails in many different ways inside torch.load
        raise UserError(
            f"cannot read {path}: not a PyTorch file, or damaged ({type(error).__name__})"
        ) from error


def _pickle_bytes(path: Path) -> bytes | None:
    """The file's bytes, to list the globals its pickle names; None past 256 MiB."""
    try:
        return path.read_bytes() if path.stat().st_size <= 1 << 28 else None
    except OSError:
        return None


def _state_dict(loaded: object) -> dict[str, torch.Tensor] | None:
    """A mapping of names to tensors, directly or under a usual checkpoint key."""
    if not isinstance(loaded, Mapping) or not loaded:
        return None
    if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        return dict(loaded)
    for key in _CHECKPOINT_KEYS:
        if key in loaded:
            return _state_dict(loaded[key])
    return None


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], spec: str) -> None:
    """Load weights; a pruning checkpoint's `weight_orig`/`weight_mask` pairs are multiplied out."""
    merged = dict(state)
    for key in [k for k in state if k.endswith("_orig")]:
        mask = f"{key[: -len('_orig')]}_mask"
        if mask in state:
            merged[key[: -len("_orig")]] = state[key] * state[mask]
            del merged[key], merged[mask]
    try:
        model.load_state_dict(merged)
    except RuntimeError as error:
        first = str(error).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])
        raise UserError(
            f"{spec} does not fit the --arch model: {detail or first[0]}; check --arch and "
            "--arch-kwargs"
        ) from error
