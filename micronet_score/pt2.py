"""Read a `.pt2` archive (the output of `torch.export.save`) without letting the file run code.

`torch.export.load` (PyTorch 2.14) unpickles archive members and retries with
`weights_only=False` when the safe unpickler refuses one, and passes strings from the file to
`exec`, `sympy.sympify` and `importlib`; its docstring says never to load an untrusted `.pt2`.
This reader opens the zip itself and accepts only what `torch.export.save` writes for one model
in archive format version 0: raw weights are built from their bytes, the few pickled members go
through torch's `weights_only=True` unpickler only, every JSON field is checked (`pt2_json`), and
only the checked pieces reach torch's deserializer. Anything else is refused with one line
naming the member; `load_trusted` (the CLI's `--trust`) hands the file to `torch.export.load`.
Either way torch's log records are silenced while loading, and its warnings held back unless
loading succeeds.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import logging
import math
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._export.serde import schema
from torch._export.serde.serialize import (
    ExportedProgramDeserializer,
    deserialize_device,
    deserialize_scalar_type,
)
from torch.export import ExportedProgram
from torch.utils._pytree import tree_structure

from micronet_score import pt2_json
from micronet_score.errors import UserError

ARCHIVE_VERSION = b"0"  # the archive format version torch.export.save writes in PyTorch 2.14
_MODEL = "models/model.json"
_INPUTS = "data/sample_inputs/model.pt"
_WEIGHTS = "data/weights/"
_CONSTANTS = "data/constants/"
_CONFIGS = {_WEIGHTS: "data/weights/model_weights_config.json",
            _CONSTANTS: "data/constants/model_constants_config.json"}
_PREFIXES = {_WEIGHTS: "weight_", _CONSTANTS: "tensor_"}
_PAYLOAD = re.compile(r"data/(weights/weight|constants/tensor)_[0-9]{1,9}")
_EXTRA = re.compile(r"extra/[^/]+")  # torch.export.save(extra_files=...): text, never read here
# Small members the zip writer adds, and what they may hold.
_MARKERS = {
    "archive_format": re.compile(rb"pt2"),
    "archive_version": re.compile(rb"[0-9]{1,4}"),
    "byteorder": re.compile(rb"little"),
    ".data/version": re.compile(rb"[0-9]{1,4}\n?"),
    ".data/serialization_id": re.compile(rb"[0-9]{1,64}"),
}
_REQUIRED = ("archive_format", "archive_version", _MODEL, _INPUTS, *_CONFIGS.values())
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_TRUST = "pass --trust only if you trust its origin"


def load(path: Path) -> ExportedProgram:
    """The exported program in `path`, read without running anything from the file.

    Raises UserError (one line, naming the member) for a damaged archive, a format version other
    than 0, or anything `torch.export.save` does not write for an ordinary model.
    """
    with quiet():
        _register_quantized_ops()
        files = _members(path)
        program = _program(path, files)
        _check_schema_version(path, program.schema_version)
        state_dict = _payloads(path, files, _WEIGHTS)
        constants = _payloads(path, files, _CONSTANTS)
        inputs = _sample_inputs(path, files[_INPUTS])
        _check_lifted_names(path, program, state_dict, constants)
        try:
            loaded = ExportedProgramDeserializer().deserialize(
                program, state_dict, constants, inputs)
        except Exception as error:  # the deserializer fails in many ways on inconsistent parts
            raise UserError(f"cannot load the exported program {path}: {_first_line(error)}") \
                from error
    if tree_structure(inputs) != loaded.call_spec.in_spec:  # .module() would fail on them
        raise _refused(path, _INPUTS, "does not match the inputs the program takes")
    _check_stored_shapes(path, loaded)
    return loaded


def _check_stored_shapes(path: Path, program: ExportedProgram) -> None:
    """Each stored tensor has the shape and dtype the graph was traced with: torch's
    deserializer does not check, and a weight of another shape would be counted as it is."""
    values = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    stored = {**program.state_dict, **program.constants}
    for spec in program.graph_signature.input_specs:
        target, traced = spec.target, values.get(spec.arg.name) if spec.arg else None
        tensor = stored.get(target) if target is not None else None
        if not isinstance(tensor, torch.Tensor) or not isinstance(traced, torch.Tensor):
            continue
        if tuple(tensor.shape) != tuple(traced.shape) or tensor.dtype != traced.dtype:
            raise _refused(path, _CONFIGS[_WEIGHTS], f"'{target}' is stored as "
                           f"{tensor.dtype} {list(tensor.shape)} but the graph reads "
                           f"{traced.dtype} {list(traced.shape)}")


def load_trusted(path: Path) -> ExportedProgram:
    """`torch.export.load`, which may run code from the file (the user passed --trust)."""
    with quiet():
        _register_quantized_ops()
        try:
            return torch.export.load(path)
        except Exception as error:
            raise UserError(f"cannot load the exported program {path}: {_first_line(error)}") \
                from error


def _register_quantized_ops() -> None:
    """PT2E programs (micronet_score.compress.quantize_pt2e) call `quantized_decomposed`
    operators, which torch registers only once this module of its own is imported."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence log records while loading (torch logs whole tracebacks on a bad file), and hold
    back warnings: they reach the caller's handlers once loading succeeds, and are dropped when
    it fails, whose one-line UserError says what matters. `logging.disable` is process-wide
    and restored on exit."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logging.disable(previous)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno, source=warning.source)


def refused_global(error: BaseException, data: bytes | None = None) -> str | None:
    """The class or function (`module.name`) whose import made `weights_only` loading fail.

    Found by listing the pickle's opcodes (never running them), else read from torch's message.
    """
    found = None
    if data is not None and data.startswith(b"PK\x03\x04"):  # torch.save's zip: data.pkl
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                pickles = [archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")]
        except (zipfile.BadZipFile, OSError, EOFError):
            pickles = []
        found = next((name for p in pickles if (name := _first_refused_global(p))), None)
    elif data is not None:
        found = _first_refused_global(data)
    if found is None and (match := _GLOBAL.search(str(error))):
        found = match.group(1)
    return found if found is None or found.isprintable() else ascii(found)


def _first_refused_global(data: bytes) -> str | None:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except ImportError:
        allowed = set()
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # a legacy torch.save file is several pickles in a row
            strings: list[str] = []
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    name = _python3_name(*str(arg).split(" ", 1))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    name = ".".join(strings[-2:])
                else:
                    if isinstance(arg, str):
                        strings.append(arg)
                    continue
                if name not in allowed:
                    return name
    except Exception:  # raw storage bytes follow the pickles: the listing stops there
        pass
    return None


def _python3_name(module: str, name: str = "") -> str:
    """`module.name` as Python 3 imports it (protocol 2 pickles say `__builtin__.eval`)."""
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{module}.{name}"


def _members(path: Path) -> dict[str, bytes]:
    """Every member, by its name under the archive's root folder, after checking the names."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            root = infos[0].filename.split("/")[0] if infos else ""
            version = next((archive.read(i) for i in infos
                            if i.filename == f"{root}/archive_version" and i.file_size < 16), b"")
            if _MARKERS["archive_version"].fullmatch(version) and version != ARCHIVE_VERSION:
                raise UserError(  # said before any member a newer format may add is refused
                    f"{path} is a .pt2 archive of format version {version.decode()}, which this "
                    f"loader cannot read (PyTorch {torch.__version__} writes version "
                    f"{ARCHIVE_VERSION.decode()}); export the model again with this PyTorch"
                )
            files: dict[str, bytes] = {}
            for info in infos:
                name = _member_name(path, info, root)
                if name in files:
                    raise _refused(path, name, "appears twice")
                files[name] = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            RuntimeError, NotImplementedError) as error:  # e.g. an encrypted member
        raise UserError(
            f"cannot read {path}: not a .pt2 archive, or truncated ({_first_line(error)})"
        ) from error
    for name in _REQUIRED:
        if name not in files:
            raise UserError(
                f"cannot read {path}: the archive has no '{name}', so it is not a complete "
                "torch.export.save file"
            )
    for name, pattern in _MARKERS.items():
        if name in files and not pattern.fullmatch(files[name]):
            raise _refused(path, name, "does not hold what torch.export.save writes there")
    return files


def _member_name(path: Path, info: zipfile.ZipInfo, root: str) -> str:
    prefix = f"{root}/"
    name = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
    if not root or root in (".", "..") or not name:
        raise _refused(path, info.filename, "is outside the archive's folder")
    if info.compress_type != zipfile.ZIP_STORED:  # torch's writer never compresses
        raise _refused(path, name, "is compressed, which torch.export.save never does")
    known = name in _MARKERS or name in (_MODEL, _INPUTS, *_CONFIGS.values()) or bool(
        _PAYLOAD.fullmatch(name) or _EXTRA.fullmatch(name))
    if not known:
        raise _refused(path, name, "is not part of what torch.export.save writes for a model")
    return name


def _program(path: Path, files: dict[str, bytes]) -> schema.ExportedProgram:
    try:
        return pt2_json.document(schema.ExportedProgram, pt2_json.parse(files[_MODEL]))
    except pt2_json.Refused as refusal:
        raise _refused(path, _MODEL, str(refusal)) from refusal


def _config(path: Path, files: dict[str, bytes], member: str) -> schema.PayloadConfig:
    try:
        return pt2_json.document(schema.PayloadConfig, pt2_json.parse(files[member]))
    except pt2_json.Refused as refusal:
        raise _refused(path, member, str(refusal)) from refusal


def _check_schema_version(path: Path, version: schema.SchemaVersion) -> None:
    major, minor = schema.SCHEMA_VERSION
    if version.major != major or version.minor > minor:
        raise UserError(
            f"{path} was written with export schema {version.major}.{version.minor}, which "
            f"PyTorch {torch.__version__} (schema {major}.{minor}) cannot read; export the model "
            "again with this PyTorch"
        )


def _payloads(path: Path, files: dict[str, bytes], folder: str) -> dict[str, torch.Tensor]:
    """The tensors a config lists: raw bytes viewed with their recorded shape and strides (as
    torch.export.save stores plain tensors), or weights-only unpickled tensors."""
    config_name = _CONFIGS[folder]
    config = _config(path, files, config_name)
    members: dict[str, str] = {}
    for fqn, meta in config.config.items():
        member = members[fqn] = f"{folder}{meta.path_name}"
        if not (meta.path_name.startswith(_PREFIXES[folder]) and _PAYLOAD.fullmatch(member)):
            raise _refused(path, config_name, f"'{fqn}' is stored as '{meta.path_name}', a kind "
                           "of object (not a tensor) that this loader refuses")
        if member not in files:
            raise _refused(path, config_name, f"'{fqn}' is stored in '{member}', which is missing")
    for name in files:
        if name.startswith(folder) and _PAYLOAD.fullmatch(name) and name not in members.values():
            raise _refused(path, name, "is not listed in the archive's config")
    # torch.export.save writes the storage of each plain tensor, which for an ordinary model is
    # exactly the bytes its views reach: any other length is refused.
    reach: dict[str, int] = {}
    for fqn, meta in config.config.items():
        if not meta.use_pickle:
            reach[members[fqn]] = max(reach.get(members[fqn], 0),
                                      _bytes_reached(path, members[fqn], meta))
    for member, size in reach.items():
        if len(files[member]) != size:
            raise _refused(path, member, f"holds {len(files[member])} bytes where its tensors "
                           f"take {size}")
    flats: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for fqn, meta in config.config.items():
        member = members[fqn]
        if meta.use_pickle:
            tensor = _unpickle(path, member, files[member])
            if not isinstance(tensor, torch.Tensor):
                raise _refused(path, member, f"holds a {type(tensor).__name__}, not a tensor")
            tensors[fqn] = tensor
        else:
            tensors[fqn] = _raw_tensor(path, member, files[member], meta, flats)
    return tensors


def _tensor_meta(path: Path, member: str, payload: schema.PayloadMeta
                 ) -> tuple[torch.dtype, torch.device, list[int], list[int], int]:
    """dtype, device, sizes, strides and storage offset of a raw tensor, all plain numbers."""
    meta = payload.tensor_meta
    if meta is None or meta.layout != schema.Layout.Strided:
        raise _refused(path, member, "has no strided tensor description")
    try:
        dtype, device = deserialize_scalar_type(meta.dtype), deserialize_device(meta.device)
    except (KeyError, RuntimeError) as error:
        raise _refused(path, member, "has an unknown dtype or device") from error
    sizes = [_plain_int(path, member, s) for s in meta.sizes]
    strides = [_plain_int(path, member, s) for s in meta.strides]
    if len(sizes) != len(strides):
        raise _refused(path, member, "does not have as many strides as sizes")
    return dtype, device, sizes, strides, _plain_int(path, member, meta.storage_offset)


def _bytes_reached(path: Path, member: str, payload: schema.PayloadMeta) -> int:
    """Bytes of storage the tensor's view reaches. A view whose elements outnumber the values
    it reaches (a stride of 0, overlapping strides) is refused: a few stored bytes would stand
    for a tensor of any size, and counting its zeros would take as long as that size."""
    dtype, _, sizes, strides, offset = _tensor_meta(path, member, payload)
    if any(n < 0 for n in sizes) or any(s < 0 for s in strides) or offset < 0:
        raise _refused(path, member, "has a negative size, stride or offset")
    if not all(sizes):
        return 0
    last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    if math.prod(sizes) > last + 1 - offset:
        raise _refused(path, member, f"describes {math.prod(sizes):,} elements over "
                       f"{last + 1 - offset:,} stored values (an expanded or overlapping view)")
    return (last + 1) * torch.empty((), dtype=dtype).element_size()


def _raw_tensor(path: Path, member: str, data: bytes, payload: schema.PayloadMeta,
                flats: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype, device, sizes, strides, offset = _tensor_meta(path, member, payload)
    flat = flats.get(member)
    if flat is None:
        flat = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(
            0, dtype=dtype)
        flats[member] = flat
    if flat.dtype != dtype:
        raise _refused(path, member, f"is shared by tensors of types {flat.dtype} and {dtype}")
    try:  # as_strided also checks that the view fits in the member's bytes
        tensor = torch.as_strided(flat, sizes, strides, offset).to(device)
    except RuntimeError as error:
        raise _refused(path, member, f"does not hold a {dtype} tensor of shape {sizes} "
                       f"({_first_line(error)})") from error
    assert payload.tensor_meta is not None
    requires_grad = payload.tensor_meta.requires_grad
    if payload.is_param:
        return nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad)


def _plain_int(path: Path, member: str, value: schema.SymInt) -> int:
    if value.type != "as_int" or not isinstance(value.value, int) or value.value < 0:
        raise _refused(path, member, "has a symbolic or negative size")
    return value.value


def _sample_inputs(path: Path, data: bytes) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    loaded = _unpickle(path, _INPUTS, data)
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], tuple)
            and isinstance(loaded[1], dict) and _plain_inputs(loaded, 0)):
        raise _refused(path, _INPUTS, "is not a pair of example arguments and keyword arguments "
                       "made of tensors and numbers")
    return loaded[0], loaded[1]  # checked by _plain_inputs: tensors, numbers and containers


def _plain_inputs(value: object, depth: int) -> bool:
    """Tensors and numbers in tuples, lists and dicts with identifier keys (torch writes the keys
    into the guard code it generates)."""
    if depth > 50:
        return False
    if value is None or isinstance(value, torch.Tensor | bool | int | float):
        return True
    if isinstance(value, tuple | list):
        return all(_plain_inputs(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isidentifier() and _plain_inputs(v, depth + 1)
                   for k, v in value.items())
    return False


def _unpickle(path: Path, member: str, data: bytes) -> object:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a bad or refused pickle
        name = refused_global(error, data)
        detail = (f"contains a pickled reference to '{name}', which could run code" if name
                  else f"is not a weights-only pickle ({type(error).__name__})")
        raise _refused(path, member, detail) from error


def _check_lifted_names(path: Path, program: schema.ExportedProgram,
                        state_dict: dict[str, torch.Tensor],
                        constants: dict[str, torch.Tensor]) -> None:
    """Every parameter, buffer and constant the graph reads is stored in the archive."""
    for spec in program.graph_module.signature.input_specs:
        kind, value = spec.type, spec.value
        if kind == "parameter":
            name, found = value.parameter_name, value.parameter_name in state_dict
        elif kind == "buffer":
            name = value.buffer_name
            found = name in state_dict or name in constants
        elif kind == "tensor_constant":
            name, found = value.tensor_constant_name, value.tensor_constant_name in constants
        else:
            continue
        if not found:
            raise _refused(path, _CONFIGS[_WEIGHTS], f"the {kind} '{name}' is missing")


def _refused(path: Path, member: str, detail: str) -> UserError:
    shown = member if member.isprintable() else ascii(member)  # a zip name may hold a newline
    return UserError(f"{path} is not a plain torch.export.save archive: {shown}: {detail}; "
                     f"{_TRUST}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else f"{text[:200]}..."
