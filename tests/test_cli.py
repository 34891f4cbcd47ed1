"""The command line: loading every kind of MODEL, formats, the gate's exit codes, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import without_zeros
from torch import nn
from typer.testing import CliRunner

from micronet_score import score_model
from micronet_score.cli import rules_app, score_app

runner = CliRunner()
MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(width)
            self.linear = nn.Linear(width, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn(self.conv(x)))
            return self.linear(x.mean([2, 3]))


    def build(width: int = 4) -> nn.Module:
        torch.manual_seed(0)
        model = Tiny(width)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.rand(p.shape) + 0.1)
        return model.eval()
    """
)
JSON_KEYS = {"score", "params_score", "ops_score", "params", "ops", "mults", "adds", "freebie",
             "rules", "baseline", "layers", "uncounted"}


@pytest.fixture()
def factory(tmp_path: Path) -> str:
    source = tmp_path / "tiny_arch.py"
    source.write_text(MODEL_SOURCE)
    return f"{source}:build"


def expected(width: int = 4) -> tuple[float, float]:
    """Hand count of Tiny at 3x32x32 (conv 27-long dot products, BN folded, relu, mean,
    linear), cross-checked against score_model below."""
    positions = 32 * 32
    conv = 27 * width * positions + 27 * width * positions  # 26 adds + 1 folded-bias add
    relu = width * positions
    mean = width + width * (positions - 1)
    linear = 10 * width + 10 * width
    params = 27 * width + width + 10 * width + 10
    return params, conv + relu + mean + linear


def invoke(*args: str) -> object:
    return runner.invoke(score_app, list(args))


def json_of(*args: str) -> dict[str, object]:
    result = runner.invoke(score_app, [*args, "--format", "json", "--no-freebie"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_factory_spec_json_keys_and_counts(factory: str) -> None:
    data = json_of(factory)
    assert set(data) >= JSON_KEYS
    assert (data["params"], data["ops"]) == expected()
    assert data["rules"] == "micronet"
    assert data["baseline"]["name"] == "wrn"  # type: ignore[index]
    assert data["uncounted"] == []


def test_arch_kwargs(factory: str) -> None:
    data = json_of(factory, "--arch-kwargs", '{"width": 8}')
    assert (data["params"], data["ops"]) == expected(8)


def test_exported_program_loads_without_source(tmp_path: Path, factory: str) -> None:
    sys.path.insert(0, str(tmp_path))
    try:
        import tiny_arch  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    model = tiny_arch.build()
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 32, 32),)), path)
    (tmp_path / "tiny_arch.py").unlink()  # the class can no longer be imported
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "micronet_score", str(path), "--format", "json", "--no-freebie"],
        capture_output=True, text=True, cwd=elsewhere, timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["params"], data["ops"]) == expected()
    assert data["input_shape"] == [3, 32, 32]


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(without_zeros(nn.Sequential(nn.Conv2d(3, 2, 1))), path)
    refused = invoke(str(path))
    assert refused.exit_code == 2  # type: ignore[attr-defined]
    assert "--trust" in refused.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in refused.output  # type: ignore[attr-defined]
    trusted = runner.invoke(score_app, [str(path), "--trust", "--format", "json"])
    assert trusted.exit_code == 0, trusted.output
    assert json.loads(trusted.stdout)["params"] == (6 + 2) / 2  # freebie applied


class CreatesFile:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": CreatesFile(target)}, path)
    result = invoke(str(path))
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "--trust" in result.stderr  # type: ignore[attr-defined]
    assert not target.exists()


def test_state_dict_with_and_without_arch(tmp_path: Path, factory: str) -> None:
    from micronet_score.loading import build_from_factory

    path = tmp_path / "weights.pth"
    torch.save({"epoch": 3, "state_dict": build_from_factory(factory).state_dict()}, path)
    missing = invoke(str(path))
    assert missing.exit_code == 2  # type: ignore[attr-defined]
    assert "--arch" in missing.stderr  # type: ignore[attr-defined]
    data = json_of(str(path), "--arch", factory)
    assert (data["params"], data["ops"]) == expected()
    wrong = invoke(str(path), "--arch", factory, "--arch-kwargs", '{"width": 8}')
    assert wrong.exit_code == 2  # type: ignore[attr-defined]
    assert "does not fit" in wrong.stderr  # type: ignore[attr-defined]


def test_torchscript_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))
    result = invoke(str(path))
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "torch.export" in result.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pt"], "model file not found"),
        (["{truncated}"], "cannot read"),
        (["{factory}", "--rules", "nope"], "valid names: imt-2022, imt-2024, micronet"),
        (["{factory}", "--baseline", "nope"], "valid names: wrn"),
        (["{factory}", "--input-shape", "3,x"], "malformed --input-shape"),
        (["{factory}", "--input-shape", "5,32,32"], "does not run on the given input shape"),
        (["{factory}", "--bits", "conv"], "malformed bit declaration"),
        (["{factory}", "--arch-kwargs", "{"], "not valid JSON"),
        (["{factory}", "--arch-kwargs", '{"depth": 2}'], "cannot call"),
        (["nomodule_xyz.sub:build"], "cannot import"),
        (["{tmp}"], "is a folder"),
        (["{junk}"], "not a PyTorch file"),
        (["{noise}"], "not a PyTorch file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, factory: str, args: list[str], message: str
) -> None:
    truncated = tmp_path / "truncated.pt"
    torch.save(nn.Linear(2, 2).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    junk, noise = tmp_path / "model.onnx", tmp_path / "noise.pt"
    junk.write_text("this is not a model\n")
    noise.write_bytes(bytes(range(256)) * 4)
    values = {"{factory}": factory, "{truncated}": str(truncated), "{tmp}": str(tmp_path),
              "{junk}": str(junk), "{noise}": str(noise)}
    filled = [values.get(a, a) for a in args]
    result = invoke(*filled)
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert message in result.stderr  # type: ignore[attr-defined]
    assert len(result.stderr.strip().splitlines()) == 1  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_debug_shows_the_exception(factory: str) -> None:
    result = invoke(factory, "--rules", "nope", "--debug")
    assert result.exit_code != 0  # type: ignore[attr-defined]
    assert result.exception is not None  # type: ignore[attr-defined]
    assert "unknown rule set" in str(result.exception)  # type: ignore[attr-defined]


def test_max_score_gate(factory: str) -> None:
    score = score_model(__import__("micronet_score.loading", fromlist=["x"])
                        .build_from_factory(factory)).score
    passed = invoke(factory, "--max-score", str(score))
    assert passed.exit_code == 0  # type: ignore[attr-defined]
    assert passed.stderr.startswith("PASS")  # type: ignore[attr-defined]
    failed = invoke(factory, "--max-score", str(score * 0.99))
    assert failed.exit_code == 1  # type: ignore[attr-defined]
    assert failed.stderr.startswith("FAIL")  # type: ignore[attr-defined]


def test_strict_fails_on_uncounted_ops(tmp_path: Path) -> None:
    source = tmp_path / "odd.py"
    source.write_text(
        "import torch\nclass Odd(torch.nn.Module):\n"
        "    def forward(self, x):\n        return torch.special.bessel_j0(x)\n"
        "def build():\n    return Odd()\n"
    )
    lenient = invoke(f"{source}:build", "--input-shape", "4")
    assert lenient.exit_code == 0  # type: ignore[attr-defined]
    assert "not counted" in lenient.stdout  # type: ignore[attr-defined]
    strict = invoke(f"{source}:build", "--input-shape", "4", "--strict")
    assert strict.exit_code == 2  # type: ignore[attr-defined]


def test_machine_formats_and_output_file(tmp_path: Path, factory: str) -> None:
    csv_text = invoke(factory, "--format", "csv").stdout  # type: ignore[attr-defined]
    header, *rows = csv_text.strip().splitlines()
    assert header.startswith("name,module,op,target,output_shape,params")
    assert [row.split(",")[2] for row in rows] == ["conv", "batch_norm", "relu", "mean", "linear"]
    markdown = invoke(factory, "--format", "markdown").stdout  # type: ignore[attr-defined]
    assert markdown.startswith("**MicroNet score:")
    assert "| `conv` | conv |" in markdown
    target = tmp_path / "out.json"
    result = invoke(factory, "--format", "json", "--output", str(target))
    assert result.exit_code == 0  # type: ignore[attr-defined]
    assert result.stdout == ""  # type: ignore[attr-defined]
    assert set(json.loads(target.read_text())) >= JSON_KEYS


def test_table_has_summary(factory: str) -> None:
    text = invoke(factory).stdout  # type: ignore[attr-defined]
    assert "score:" in text
    assert "16-bit freebie: applied" in text


def test_rules_command_and_version() -> None:
    listing = runner.invoke(rules_app, [])
    assert listing.exit_code == 0
    assert "micronet" in listing.stdout
    assert "resnet18-imt-2024" in listing.stdout
    version = invoke("--version")
    assert version.exit_code == 0  # type: ignore[attr-defined]
    assert version.stdout.startswith("micronet-score ")  # type: ignore[attr-defined]


def test_export_fallback_for_shape_dependent_control_flow(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = nn.Conv2d(3, 2, 1, bias=False)
            self.large = nn.Conv2d(3, 2, 3, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.small(x) if x.shape[-1] < 16 else self.large(x)

    report = score_model(without_zeros(Branchy()), input_shape=(3, 8, 8), freebie=False)
    assert report.trace_method == "torch.export"
    assert report.ops == 6 * 64 + 4 * 64  # the 1x1 branch: 3 mults, 2 adds per output


def test_untraceable_model_names_where_it_broke() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    class Inner(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    from micronet_score import UserError

    with pytest.raises(UserError, match="symbolic tracing failed in inner"):
        score_model(DataDependent(), input_shape=(3, 4, 4))


def test_token_ids_with_input_dtype(tmp_path: Path) -> None:
    source = tmp_path / "tokens.py"
    source.write_text(
        "import torch\nfrom torch import nn\n"
        "class Tokens(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.embedding = nn.Embedding(10, 4)\n"
        "        self.linear = nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        return self.linear(self.embedding(x))\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    model = Tokens()\n"
        "    with torch.no_grad():\n"
        "        for p in model.parameters():\n"
        "            p.fill_(1.0)\n"
        "    return model\n"
    )
    data = json_of(f"{source}:build", "--input-shape", "5", "--input-dtype", "int64",
                   "--baseline", "lstm")
    # 50 stored values; 5 tokens x 2 outputs, 4 mults and 3 + 1 adds each.
    assert (data["params"], data["ops"]) == (50, 80)
    float_input = invoke(f"{source}:build", "--input-shape", "5", "--baseline", "lstm")
    assert float_input.exit_code == 2  # type: ignore[attr-defined]
    assert "--input-shape" in float_input.stderr  # type: ignore[attr-defined]


def test_bundled_sample_scores_where_its_model_class_cannot_be_imported() -> None:
    sample = Path(__file__).parents[1] / "sample_models" / "densenet121_gr4_cifar.pt2"
    # `sys.modules[name] = None` makes every import of the toolkit (which defines the class) fail.
    code = (
        "import sys; sys.modules['micronet_score.compress'] = None; "
        "from micronet_score.cli import main; main(sys.argv[1:])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(sample), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["uncounted"] == []
    assert data["input_shape"] == [3, 32, 32]
    # 119,146 values, less one per channel of the 58 BatchNorms that fold into a 1x1 conv
    # (16 channels each: 928), at 16 bits with the freebie. The model is untrained: its folded
    # shifts (beta - mean * gamma / std) are all 0, but a bias is always stored dense.
    assert data["params"] == (119_146 - 58 * 16) * 16 / 32
