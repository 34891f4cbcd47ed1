"""Rule files and baselines are data: a typo fails at load, naming file, key and the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from micronet_score import UserError
from micronet_score.opkinds import activation_kinds
from micronet_score.rules import (
    available_baselines,
    available_rules,
    load_baseline,
    load_rules,
    rules_dir,
)


def test_bundled_rule_sets_and_baselines_load() -> None:
    assert "micronet" in available_rules()
    for name in available_rules():
        assert load_rules(name).name == name
    assert available_baselines() == [
        "wrn", "mobilenetv2", "lstm", "resnet18-imt", "resnet18-imt-2024",
    ]


def test_micronet_constants() -> None:
    rules = load_rules("micronet")
    assert rules.default_baseline == "wrn"
    assert rules.accumulator_bits == 32
    assert (rules.freebie.enabled, rules.freebie.bits) == (True, 16)
    assert rules.batch_norm.fold
    assert set(rules.activations) == activation_kinds()


@pytest.mark.parametrize(
    ("name", "params", "ops", "shape"),
    [
        ("wrn", 36.5e6, 10.49e9, (3, 32, 32)),
        ("mobilenetv2", 6.9e6, 1170e6, (3, 224, 224)),
        ("lstm", 159e6, 318e6, None),
        ("resnet18-imt", 5_586_981, 834_362_880, (3, 32, 32)),
        ("resnet18-imt-2024", 5.6e6, 2.8e8, (3, 32, 32)),
    ],
)
def test_baseline_figures(name: str, params: float, ops: float,
                          shape: tuple[int, ...] | None) -> None:
    baseline = load_baseline(name)
    assert (baseline.params, baseline.ops, baseline.input_shape) == (params, ops, shape)


def edited_rules(tmp_path: Path, edit: dict[str, object]) -> Path:
    data = yaml.safe_load((rules_dir() / "micronet.yaml").read_text())
    data.update(edit)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_rule_file_by_path(tmp_path: Path) -> None:
    path = edited_rules(tmp_path, {"name": "custom", "accumulator_bits": 24})
    rules = load_rules(str(path))
    assert (rules.name, rules.accumulator_bits, rules.source) == ("custom", 24, str(path))


def test_unknown_key_names_file_key_and_valid_keys(tmp_path: Path) -> None:
    path = edited_rules(tmp_path, {"acumulator_bits": 24})
    with pytest.raises(UserError) as error:
        load_rules(str(path))
    message = str(error.value)
    assert str(path) in message
    assert "'acumulator_bits'" in message
    assert "accumulator_bits" in message.split("valid keys:")[1]


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = edited_rules(tmp_path, {"freebie": {"enabled": True, "bits": 16, "extra": 1}})
    with pytest.raises(UserError, match=r"unknown key 'freebie.extra'; valid keys: bits, enabled"):
        load_rules(str(path))


def test_unknown_activation_lists_valid_names(tmp_path: Path) -> None:
    data = yaml.safe_load((rules_dir() / "micronet.yaml").read_text())
    data["activations"]["swish"] = {"mults": 1, "adds": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"unknown key 'activations\.swish'; valid keys: .*silu"):
        load_rules(str(path))


def test_missing_key(tmp_path: Path) -> None:
    data = yaml.safe_load((rules_dir() / "micronet.yaml").read_text())
    del data["batch_norm"]
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="missing key 'batch_norm'"):
        load_rules(str(path))


def test_unknown_storage_format(tmp_path: Path) -> None:
    sparsity = {"skip_zero_weights": True, "storage": ["dense", "csr"],
                "params_scale": "none", "ops_scale": "none"}
    path = edited_rules(tmp_path, {"sparsity": sparsity})
    expected = r"unknown value 'csr' for 'sparsity\.storage\[1\]'; valid: dense"
    with pytest.raises(UserError, match=expected):
        load_rules(str(path))


def test_unknown_formula_variant_lists_the_valid_ones(tmp_path: Path) -> None:
    path = edited_rules(tmp_path, {"formulas": {"conv": "fast"}})
    with pytest.raises(UserError, match=r"unknown formula 'fast' for 'formulas\.conv'; valid: "
                                        r"micronet, imt_2022, macs"):
        load_rules(str(path))
    path = edited_rules(tmp_path, {"counted": {"kinds": ["convolution"], "modules_only": False}})
    expected = r"unknown value 'convolution' for 'counted\.kinds\[0\]'; valid: conv, "
    with pytest.raises(UserError, match=expected):
        load_rules(str(path))


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(UserError, match=r"unknown rule set 'micronett'; valid names: .*micronet"):
        load_rules("micronett")
    with pytest.raises(UserError, match=r"unknown baseline 'wrm'; valid names: wrn, "):
        load_baseline("wrm")


def test_baseline_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nmodel: tiny\ndataset: digits\nparams: 1000\nops: 2000000\n"
        "input_shape: [1, 8, 8]\nquality: 95%\n"
    )
    baseline = load_baseline(str(path))
    assert (baseline.name, baseline.params, baseline.ops, baseline.input_shape) == (
        "mine", 1000, 2e6, (1, 8, 8)
    )
    path.write_text("name: mine\nmodel: tiny\ndataset: d\nparams: -1\nops: 1\n"
                    "input_shape: null\nquality: q\n")
    with pytest.raises(UserError, match=r"'params' must be a number from 1 to 1e\+15, got -1"):
        load_baseline(str(path))
