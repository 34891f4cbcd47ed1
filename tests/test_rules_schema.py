"""Rule and baseline files are hostile input: every bad value, key or YAML construct is refused
with one line naming the file and the key path, and what loads is finite and in range."""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from micronet_score import UserError
from micronet_score.cli import score_app
from micronet_score.opkinds import activation_kinds
from micronet_score.rules import Baseline, RuleSet, load_baseline, load_rules, rules_dir

RULES_TEXT = (rules_dir() / "micronet.yaml").read_text()
RULES: dict[str, Any] = yaml.safe_load(RULES_TEXT)
BASELINE: dict[str, Any] = {"name": "wrn", **yaml.safe_load(
    (rules_dir() / "baselines.yaml").read_text())["wrn"]}
BASELINE_TEXT = yaml.safe_dump(BASELINE, sort_keys=False)
# The "billion laughs": 472 bytes that PyYAML's safe loader expands to 10**9 list items.
BILLION_LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)
MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def build() -> nn.Module:
        torch.manual_seed(0)
        layers = [nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)]
        return nn.Sequential(*layers).eval()
    """
)
runner = CliRunner()
BAR = 4.1e-6  # just above the tiny model's score under the bundled micronet rules, 4.08e-6
# The rule values the tiny model's score depends on.
TINY_LEAVES = [
    ("accumulator_bits",), ("default_bits",), ("freebie", "enabled"), ("freebie", "bits"),
    ("batch_norm", "fold"), ("batch_norm", "mults_per_element"), ("batch_norm", "adds_per_element"),
    ("batch_norm", "params_per_channel"), ("sparsity", "skip_zero_weights"),
    ("activations", "relu", "mults"), ("activations", "relu", "adds"),
]


def edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def rules_with(old: str, new: str) -> str:
    return edited(RULES_TEXT, old, new)


def refusal(load: Callable[[str], object], path: Path) -> str:
    """The message of the UserError `load` raises, after checking it is one line naming `path`."""
    with pytest.raises(UserError) as caught:
        load(str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


RELU = "relu: {mults: 1, adds: 0}"


def line_of(text: str) -> int:
    """The line of micronet.yaml where `text` first appears (1-based)."""
    return RULES_TEXT[:RULES_TEXT.index(text)].count("\n") + 1
MULTS = "'activations.relu.mults' must be a number from 0 to 1000000, got "
RULE_CASES = {
    "negative": (rules_with(RELU, "relu: {mults: -1000, adds: 0}"), MULTS + "-1000"),
    "nan": (rules_with(RELU, "relu: {mults: .nan, adds: 0}"), MULTS + "nan"),
    "inf": (rules_with(RELU, "relu: {mults: .inf, adds: 0}"), MULTS + "inf"),
    "minus_inf": (
        rules_with("adds_per_element: 1", "adds_per_element: -.inf"),
        "'batch_norm.adds_per_element' must be a number from 0 to 1000000, got -inf",
    ),
    "bool_as_number": (rules_with(RELU, "relu: {mults: true, adds: 0}"), MULTS + "true"),
    "huge": (rules_with(RELU, "relu: {mults: 1.0e+300, adds: 0}"), MULTS + "1e+300"),
    "exponent_float": (rules_with(RELU, "relu: {mults: 2e7, adds: 0}"), MULTS + "20000000.0"),
    "huge_int": (
        rules_with("accumulator_bits: 32", "accumulator_bits: " + "9" * 80),
        "'accumulator_bits' must be a whole number from 1 to 64, got " + "9" * 57 + "...",
    ),
    "sexagesimal_int": (  # YAML 1.1 reads 1:59:59 as 7199, of any size: refused as a typo
        rules_with("accumulator_bits: 32", "accumulator_bits: 1" + ":59" * 3000),
        "'1" + ":59" * 13 + "' is a base-60 number in YAML 1.1; write the number in decimal, "
        "or quote it (line 18)",
    ),
    "digits_beyond_python": (
        rules_with("accumulator_bits: 32", "accumulator_bits: " + "9" * 5000),
        "invalid YAML: a number with too many digits",
    ),
    "zero_bits": (
        rules_with("  bits: 16", "  bits: 0"),
        "'freebie.bits' must be a whole number from 1 to 64, got 0",
    ),
    "float_for_int": (
        rules_with("default_bits: 32", "default_bits: 16.5"),
        "'default_bits' must be a whole number from 1 to 64, got 16.5",
    ),
    "quoted_no": (
        rules_with("enabled: true", "enabled: 'no'"),
        "'freebie.enabled' must be true or false, got 'no'",
    ),
    "number_for_bool": (
        rules_with("fold: true", "fold: 1"), "'batch_norm.fold' must be true or false, got 1"
    ),
    "list_for_text": (
        rules_with("name: micronet", "name: [micronet]"),
        "'name' must be one line of text of 1 to 200 characters, got a list",
    ),
    "two_line_text": (
        rules_with("name: micronet", 'name: "micro\\nnet"'),
        "'name' must be one line of text of 1 to 200 characters, got 'micro\\nnet'",
    ),
    "scalar_for_section": (
        rules_with("freebie:\n  enabled: true\n  bits: 16\n", "freebie: on\n"),
        "'freebie' must be a mapping of keys to values, got true",
    ),
    "missing_key": (rules_with("  bits: 16\n", ""), "missing key 'freebie.bits'"),
    "missing_activation": (rules_with("  " + RELU + "\n", ""), "missing key 'activations.relu'"),
    "unknown_key": (
        rules_with(RELU, "relu: {mults: 1, adds: 0, divs: 1}"),
        "unknown key 'activations.relu.divs'; valid keys: adds, mults",
    ),
    "non_text_key": (
        RULES_TEXT + "7: seven\n",
        "unknown key '7'; valid keys: accumulator_bits, activations, add_width, batch_norm, "
        "counted, default_baseline, default_bits, description, formulas, freebie, name, sparsity",
    ),
    "formula_for_wrong_kind": (
        rules_with("formulas: {}", "formulas: {relu: macs}"),
        "unknown formula 'macs' for 'formulas.relu'; valid: micronet",
    ),
    "storage_without_dense": (
        rules_with("storage: [dense, sparse,", "storage: [sparse,"),
        "'sparsity.storage' must include 'dense'",
    ),
    "duplicate_top_level": (
        RULES_TEXT + "accumulator_bits: 16\n",
        f"duplicate key 'accumulator_bits'; each key may appear once (line "
        f"{RULES_TEXT.count(chr(10)) + 1})",
    ),
    "duplicate_nested": (
        rules_with(RELU, "relu: {mults: 1, adds: 0, mults: 1}"),
        "duplicate key 'activations.relu.mults'; each key may appear once (line "
        f"{line_of(RELU)})",
    ),
    "duplicate_section_key": (
        rules_with("  enabled: true\n", "  enabled: true\n  enabled: false\n"),
        "duplicate key 'freebie.enabled'; each key may appear once (line "
        f"{line_of('  enabled: true') + 1})",
    ),
    "billion_laughs": (
        BILLION_LAUGHS,
        "anchors and aliases (& and *) are not allowed; write the value out in full (line 1)",
    ),
    "python_tag": (
        "name: !!python/object/apply:os.system [echo hi]\n",
        "the tag '!!python/object/apply:os.system' is not allowed; write plain values (line 1)",
    ),
    "binary_tag": (
        rules_with("name: micronet", "name: !!binary bWljcm9uZXQ="),
        "the tag '!!binary' is not allowed; write plain values (line 13)",
    ),
    "merge_key": (
        RULES_TEXT + "<<: {name: other}\n",
        "unknown key '<<'; valid keys: accumulator_bits, activations, add_width, batch_norm, "
        "counted, default_baseline, default_bits, description, formulas, freebie, name, sparsity",
    ),
    "deep": ("a: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 16 levels (line 1)"),
    "many_values": (
        "a: [" + "1, " * 20_000 + "1]\n",
        "more than 10000 values; a rule file has about 100 (line 1)",
    ),
    "list_key": (
        "? [a, b]\n: 1\n", "a key must be a plain value, not a list or a mapping (line 1)"
    ),
    "two_documents": (
        "a: 1\n---\nb: 2\n",
        "invalid YAML at line 2, column 1: expected a single document in the stream, but found "
        "another document",
    ),
    "empty": ("", "the file must be a mapping of keys to values, got null"),
    "control_character": (
        "name: \x07\n", "invalid YAML: unacceptable character #x0007: special characters are not "
        "allowed",
    ),
}


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_bad_rule_file_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, expected = RULE_CASES[case]
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    assert refusal(load_rules, path) == expected


BASELINE_CASES = {
    "zero_params": (
        edited(BASELINE_TEXT, "params: 36500000", "params: 0"),
        "'params' must be a number from 1 to 1e+15, got 0",
    ),
    "nan_ops": (
        edited(BASELINE_TEXT, "ops: 10490000000", "ops: .NaN"),
        "'ops' must be a number from 1 to 1e+15, got nan",
    ),
    "huge_ops": (
        edited(BASELINE_TEXT, "ops: 10490000000", "ops: 1e16"),
        "'ops' must be a number from 1 to 1e+15, got 1e+16",
    ),
    "bool_params": (
        edited(BASELINE_TEXT, "params: 36500000", "params: yes"),
        "'params' must be a number from 1 to 1e+15, got true",
    ),
    "text_params": (
        edited(BASELINE_TEXT, "params: 36500000", "params: '36500000'"),
        "'params' must be a number from 1 to 1e+15, got '36500000'",
    ),
    "negative_dimension": (
        edited(BASELINE_TEXT, "- 32\n- 32", "- -32\n- 32"),
        "'input_shape[1]' must be a whole number from 1 to 1048576, got -32",
    ),
    "empty_shape": (
        edited(BASELINE_TEXT, "input_shape:\n- 3\n- 32\n- 32", "input_shape: []"),
        "'input_shape' must have 1 to 8 items, got 0",
    ),
    "name_not_text": (edited(BASELINE_TEXT, "name: wrn", "name: null"),
                      "'name' must be one line of text of 1 to 200 characters, got null"),
    "missing_quality": (edited(BASELINE_TEXT, "quality: 80% top-1\n", ""),
                        "missing key 'quality'"),
    "duplicate": (BASELINE_TEXT + "ops: 1\n", "duplicate key 'ops'; each key may appear once "
                  f"(line {BASELINE_TEXT.count(chr(10)) + 1})"),
    "not_a_mapping": ("[1, 2]\n", "the file must be a mapping of keys to values, got a list"),
}


@pytest.mark.parametrize("case", list(BASELINE_CASES))
def test_bad_baseline_file_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, expected = BASELINE_CASES[case]
    path = tmp_path / "baseline.yaml"
    path.write_text(text, encoding="utf-8")
    assert refusal(load_baseline, path) == expected


def test_exponent_numbers_read_as_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads 2.8e8 (no exponent sign) as text; a baseline file means a number."""
    path = tmp_path / "mine.yaml"
    path.write_text(edited(edited(BASELINE_TEXT, "params: 36500000", "params: 5.6e6"),
                           "ops: 10490000000", "ops: 28E7"))
    baseline = load_baseline(str(path))
    assert (baseline.params, baseline.ops) == (5.6e6, 2.8e8)


def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (1 << 20) + b"\nname: big\n")
    assert refusal(load_rules, path) == "larger than 1 MiB; a rule or baseline file is a few KiB"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    os.mkfifo(path)  # nothing ever writes to it: reading it would wait forever
    assert refusal(load_rules, path) == "not a regular file; give the path of a YAML file"
    assert refusal(load_baseline, path) == "not a regular file; give the path of a YAML file"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_endless_device_and_folder_are_refused() -> None:
    for path in (Path("/dev/zero"), Path(__file__).parent):
        assert refusal(load_rules, path) == "not a regular file; give the path of a YAML file"


@pytest.fixture()
def factory(tmp_path: Path) -> str:
    source = tmp_path / "tiny_arch.py"
    source.write_text(MODEL_SOURCE)
    return f"{source}:build"


@pytest.mark.parametrize(
    ("option", "case"),
    [("--rules", case) for case in ("negative", "quoted_no", "duplicate_nested",
                                    "billion_laughs", "python_tag", "missing_key")]
    + [("--baseline", case) for case in ("zero_params", "nan_ops", "duplicate")],
)
def test_cli_refuses_bad_files_with_exit_2_and_one_line(
    tmp_path: Path, factory: str, option: str, case: str
) -> None:
    text, expected = (RULE_CASES if option == "--rules" else BASELINE_CASES)[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(score_app, [factory, option, str(path), "--input-shape", "3,8,8"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {path}: {expected}"
    assert "Traceback" not in result.output


def test_cli_refuses_a_fifo(tmp_path: Path, factory: str) -> None:
    path = tmp_path / "rules.yaml"
    os.mkfifo(path)
    result = runner.invoke(score_app, [factory, "--rules", str(path)])
    assert result.exit_code == 2, result.output
    expected = "not a regular file; give the path of a YAML file"
    assert result.stderr.strip() == f"error: {path}: {expected}"


# Property tests: mutate the bundled documents, dump them, load them.

SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(0, 70)
    | st.floats() | st.floats(0, 1e7) | st.text(max_size=20)
    | st.sampled_from(["no", "yes", "true", "", "dense", "relu", "micronet", "1e6", ".nan", "~"])
)
KEYS = st.text(max_size=12) | st.sampled_from(["mults", "name", "bits", "relu", "dense"]) \
    | st.integers(-3, 3) | st.booleans() | st.none()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a document of dicts and lists, the root's () first."""
    found = [prefix]
    children = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, child in children:
        found += paths(child, (*prefix, key))
    return found


def at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def similar(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same YAML type as `value`, often valid: mutations that may still load."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(0, 64)
    if isinstance(value, float):
        return st.floats(0, 1e6)
    if isinstance(value, str):
        return st.sampled_from([value, "relu", "dense", "none"]) | st.text(min_size=1, max_size=9)
    return st.just(value)


def mutated(data: st.DataObject, document: dict[str, Any]) -> dict[str, Any]:
    """The document with 0 to 3 values replaced (by a similar or any value), keys deleted or
    keys added."""
    document = yaml.safe_load(yaml.safe_dump(document))  # a deep copy
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths(document)[1:]), label="path")
        parent, last = at(document, path[:-1]), path[-1]
        action = data.draw(st.sampled_from(["similar", "replace", "delete", "add"]), label="action")
        if action == "similar":
            parent[last] = data.draw(similar(parent[last]), label="value")
        elif action == "replace":
            parent[last] = data.draw(VALUES, label="value")
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[data.draw(KEYS, label="key")] = data.draw(VALUES, label="value")
        else:
            parent.append(data.draw(VALUES, label="value"))
    return document


def duplicated_key_text(data: st.DataObject, text: str) -> tuple[str, bool]:
    """Maybe copy one `key: value` block (lines) right after itself: a duplicate key."""
    blocks = []
    lines = text.splitlines(keepends=True)
    for node in yaml.compose_all(text):
        stack = [node]
        while stack:
            current = stack.pop()
            if isinstance(current, yaml.MappingNode):
                for key, value in current.value:
                    start, end = key.start_mark, value.end_mark
                    if lines[start.line][:start.column].strip() == "":
                        last = end.line if end.column > 0 else end.line - 1
                        blocks.append((start.line, max(last, start.line)))
            if isinstance(current, yaml.MappingNode | yaml.SequenceNode):
                stack += [v for pair in current.value for v in (
                    pair if isinstance(pair, tuple) else (pair,))]
    if not blocks or data.draw(st.integers(0, 3), label="duplicate a key") > 0:
        return text, False
    first, last = data.draw(st.sampled_from(blocks), label="block")
    doubled = "".join(lines[: last + 1] + lines[first : last + 1] + lines[last + 1 :])
    try:
        yaml.compose(doubled)  # PyYAML's own reader keeps the last of two keys
    except yaml.YAMLError:  # the block's lines were not the whole value (an indentless list)
        return text, False
    return doubled, True


def dumped(data: st.DataObject, document: dict[str, Any]) -> tuple[str, bool]:
    text = yaml.safe_dump(mutated(data, document), sort_keys=False, allow_unicode=True)
    return duplicated_key_text(data, text)


def assert_text(value: object) -> None:
    assert isinstance(value, str) and value.isprintable() and 0 < len(value) <= 200


def assert_sane_rules(rules: RuleSet) -> None:
    for bits in (rules.accumulator_bits, rules.default_bits, rules.freebie.bits):
        assert type(bits) is int and 1 <= bits <= 64
    costs = [rules.batch_norm.mults_per_element, rules.batch_norm.adds_per_element]
    costs += [c for cost in rules.activations.values() for c in (cost.mults, cost.adds)]
    for cost in costs:
        assert type(cost) is float and math.isfinite(cost) and 0 <= cost <= 1e6
    assert type(rules.batch_norm.params_per_channel) is int
    assert 0 <= rules.batch_norm.params_per_channel <= 1e6
    assert set(rules.activations) == activation_kinds()
    assert "dense" in rules.sparsity.storage
    for flag in (rules.freebie.enabled, rules.batch_norm.fold, rules.counted.modules_only,
                 rules.sparsity.skip_zero_weights):
        assert type(flag) is bool
    for text in (rules.name, rules.description, rules.default_baseline):
        assert_text(text)


def assert_sane_baseline(baseline: Baseline) -> None:
    for figure in (baseline.params, baseline.ops):
        assert type(figure) is float and math.isfinite(figure) and 1 <= figure <= 1e15
    shape = baseline.input_shape
    assert shape is None or (1 <= len(shape) <= 8
                             and all(type(d) is int and 1 <= d <= 2**20 for d in shape))
    for text in (baseline.name, baseline.model, baseline.dataset, baseline.quality):
        assert_text(text)


def run_property(tmp_path: Path, document: dict[str, Any], load: Callable[[str], Any],
                 sane: Callable[[Any], None], examples: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    path = tmp_path / "mutated.yaml"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        text, duplicate = dumped(data, document)
        path.write_text(text, encoding="utf-8")
        try:
            loaded = load(str(path))
        except UserError as error:
            message = str(error)
            assert "\n" not in message and message.startswith(f"{path}: "), message
            # Nesting is checked while reading, duplicates once read: either may come first.
            assert not duplicate or "duplicate key '" in message or "nested deeper" in message
            outcomes["refused"] += 1
            outcomes["of which a duplicate key"] += duplicate
            return
        assert not duplicate
        sane(loaded)
        outcomes["loaded"] += 1

    check()
    return outcomes


def test_mutated_rule_files_load_sane_or_are_refused_in_one_line(tmp_path: Path) -> None:
    outcomes = run_property(tmp_path, RULES, load_rules, assert_sane_rules, 300)
    print(f"rule files tried: {dict(outcomes)}")
    assert min(outcomes["loaded"], outcomes["refused"], outcomes["of which a duplicate key"]) > 0


def test_mutated_baseline_files_load_sane_or_are_refused_in_one_line(tmp_path: Path) -> None:
    outcomes = run_property(tmp_path, BASELINE, load_baseline, assert_sane_baseline, 300)
    print(f"baseline files tried: {dict(outcomes)}")
    assert min(outcomes["loaded"], outcomes["refused"], outcomes["of which a duplicate key"]) > 0


def test_mutated_rule_files_through_the_cli(tmp_path: Path, factory: str) -> None:
    """Exit 0 or 1 with a finite, non-negative score, or 2 with one line; never a traceback."""
    outcomes: Counter[int] = Counter()
    path = tmp_path / "mutated.yaml"
    numbers = st.integers(-5, 70) | st.floats(allow_nan=True) | st.floats(0, 100)

    # Derandomized: the same 20 examples every run, so that every outcome surely occurs.
    @settings(max_examples=20, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        document = yaml.safe_load(RULES_TEXT)
        for leaf in data.draw(st.lists(st.sampled_from(TINY_LEAVES), max_size=2), label="leaves"):
            old = at(document, leaf)
            new = data.draw(similar(old) | numbers | SCALARS, label="value")
            at(document, leaf[:-1])[leaf[-1]] = new
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        result = runner.invoke(score_app, [factory, "--rules", str(path), "--input-shape",
                                           "3,8,8", "--format", "json", "--max-score", str(BAR)])
        assert result.exit_code in (0, 1, 2), result.output
        assert "Traceback" not in result.output
        if result.exit_code == 2:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert str(path) in result.stderr
        else:
            score = json.loads(result.stdout)["score"]
            assert math.isfinite(score) and score >= 0
            assert (score > BAR) == (result.exit_code == 1)
        outcomes[result.exit_code] += 1

    check()
    print(f"CLI runs by exit code: {dict(outcomes)}")
    assert outcomes[2] > 0 and outcomes[0] + outcomes[1] > 0


def test_base_60_numbers_are_refused() -> None:
    """YAML 1.1 reads `params: 190:20:30` as 685230; a rule value written so is a typo."""
    from micronet_score.safe_yaml import parse_yaml

    with pytest.raises(UserError, match="base-60 number"):
        parse_yaml("params: 190:20:30\n", "baseline.yaml")
    assert parse_yaml("params: '190:20:30'\nops: 0x10\n", "baseline.yaml") == {
        "params": "190:20:30", "ops": 16
    }
