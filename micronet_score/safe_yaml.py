"""A YAML reader for files that may be hostile: rule sets and baselines given by path.

A rule file is a few KiB of plain mappings, lists and scalars, so the reader refuses everything
else rather than bounding it: anchors and aliases (no "billion laughs" expansion), explicit tags
beyond the core ones (str, int, float, bool, null, seq, map), duplicate keys at any depth (PyYAML
keeps the last one silently), nesting deeper than `MAX_DEPTH`, more than `MAX_NODES` values (each
costs pure-Python parsing time), files over `MAX_BYTES` (read at most that many bytes) and
anything but a regular file (a FIFO or /dev/zero would block or never end). Scalars resolve as in
PyYAML's safe loader (YAML 1.1: unquoted yes/no are booleans), except that dates and merge keys
(`<<`) stay text, and `1e6` or `2.8e8` are numbers as in YAML 1.2. Every refusal is a `UserError`
of one line that names the file.
"""

from __future__ import annotations

import os
import re
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from micronet_score.errors import UserError

MAX_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_NODES = 10_000  # a rule file has about 100; 10,000 parse in about 0.2 s
_CORE = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(
    _CORE + tag for tag in ("str", "int", "float", "bool", "null", "seq", "map")
)
_IMPLICIT = frozenset(_CORE + tag for tag in ("int", "float", "bool", "null"))
# YAML 1.2 floats with an exponent but no dot or exponent sign, which YAML 1.1 reads as text.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def display(path: Path | str) -> str:
    """A path as it may appear in a one-line message (escaped when it holds control characters)."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def read_yaml(path: Path) -> Any:
    """The document in `path` as plain dicts, lists, str, int, float, bool and None.

    Raises UserError (one line, naming the file) for an unreadable, non-regular or oversized file,
    invalid YAML, or any construct the module docstring lists as refused.
    """
    where = display(path)
    return _parse(_read_bounded(path, where), where)


def parse_yaml(text: str, where: str) -> Any:
    """`text` (an option's value, say) read as `read_yaml` reads a file; `where` names it in
    errors. The result is the caller's own to modify."""
    import copy

    return copy.deepcopy(_parse(text.encode("utf-8", "surrogatepass"), where))


def _read_bounded(path: Path, where: str) -> bytes:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the open file then refuses it
    # without the race a stat-before-open would leave.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if not regular:
            os.close(fd)
        else:
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise UserError(f"cannot read {where}: {error.strerror or error}") from error
    if not regular:
        raise UserError(f"{where}: not a regular file; give the path of a YAML file")
    if len(data) > MAX_BYTES:
        raise UserError(
            f"{where}: larger than {MAX_BYTES >> 20} MiB; a rule or baseline file is a few KiB"
        )
    return data


@lru_cache(maxsize=8)
def _parse(data: bytes, where: str) -> Any:
    """Parsed once per content: scoring many models should not re-parse the rules. The result is
    shared between callers, who must not modify it."""
    loader = None
    try:
        loader = _StrictLoader(data, where)  # decodes and checks the characters already
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(part for part in (error.context, error.problem) if part)
        raise UserError(f"{where}: invalid YAML{at}: {_one_line(problem)}") from error
    except yaml.YAMLError as error:  # a ReaderError: not UTF-8/16, or a control character
        first = (str(error).splitlines() or ["unreadable"])[0]
        raise UserError(f"{where}: invalid YAML: {_one_line(first)}") from error
    except ValueError as error:  # Python refuses to read an int of over 4300 digits
        raise UserError(f"{where}: invalid YAML: a number with too many digits") from error
    finally:
        if loader is not None:
            loader.dispose()


_SIXTY = frozenset({_CORE + "int", _CORE + "float"})


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the refusals of the module docstring (a fresh one per file)."""

    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(data)
        self.where = where
        self.path: list[str] = []
        self.nodes = 0
        self.paths: dict[int, str] = {}  # id(mapping node) -> its key path, for duplicate keys

    def refuse(self, node_or_event: Any, problem: str) -> UserError:
        mark = node_or_event.start_mark
        return UserError(f"{self.where}: {problem} (line {mark.line + 1})")

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise self.refuse(event, "anchors and aliases (& and *) are not allowed; write the "
                                     "value out in full")
        if len(self.path) >= MAX_DEPTH:
            raise self.refuse(event, f"nested deeper than {MAX_DEPTH} levels")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.refuse(event, f"more than {MAX_NODES} values; a rule file has about 100")
        if isinstance(parent, MappingNode) and index is None and not isinstance(event, ScalarEvent):
            raise self.refuse(event, "a key must be a plain value, not a list or a mapping")
        self.path.append(_step(self.path[-1] if self.path else "", index))
        node = super().compose_node(parent, index)
        path = self.path.pop()
        if node is not None and node.tag not in ALLOWED_TAGS:
            tag = node.tag.replace(_CORE, "!!", 1) if node.tag.startswith(_CORE) else node.tag
            raise self.refuse(node, f"the tag {tag[:60]!r} is not allowed; write plain values")
        if isinstance(node, MappingNode):
            self.paths[id(node)] = path
        if isinstance(node, ScalarNode) and node.tag in _SIXTY and ":" in node.value:
            # YAML 1.1 reads 190:20:30 as 685230 (base 60); YAML 1.2 dropped it, and in a
            # rule file it can only be a typo
            raise self.refuse(node, f"'{node.value[:40]}' is a base-60 number in YAML 1.1; "
                                    "write the number in decimal, or quote it")
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Replaces PyYAML's, which keeps the last of two equal keys and expands merge keys.
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in mapping:
                where = _step(self.paths.get(id(node), ""), key_node)
                raise self.refuse(key_node, f"duplicate key '{where}'; each key may appear once")
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _step(parent: str, index: Any) -> str:
    """The key path of a child: `parent.key` under a mapping, `parent[i]` in a list."""
    if isinstance(index, int):
        return f"{parent}[{index}]"
    if isinstance(index, ScalarNode):
        key = index.value if index.value.isprintable() else ascii(index.value)
        key = key if len(key) <= 60 else key[:57] + "..."
        return f"{parent}.{key}" if parent else key
    return parent


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag in _IMPLICIT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_CORE + "float", _EXPONENT_FLOAT, list("-+.0123456789"))
