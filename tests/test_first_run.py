"""A first run that helps: local modules found as `python -m` would find them, a .py file given
without its function explained, an exported program's fixed shape named, and a model scored at an
input or against a baseline it was not built for flagged in the report's warnings."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from micronet_score.api import score_model
from micronet_score.compress.models import create_model
from micronet_score.errors import UserError
from micronet_score.loading import build_from_factory, load_model

MYTINY = textwrap.dedent(
    """
    from pathlib import Path
    from torch import nn

    Path(__file__).with_name("ran").write_text("run")  # listing its functions must not run it


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x)


    def make():
        return Tiny()


    async def _private():
        pass


    def build():
        return Tiny()
    """
)
# conv 3->2 1x1 with bias at 3x4x4: 8 params; 16 positions x 2 channels x (3 mults, 2 + 1 adds).
TINY_PARAMS, TINY_MULTS, TINY_ADDS = 8, 96, 96


def console_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run as users do: the console script does not put the current folder on sys.path."""
    script = shutil.which("micronet-score", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed (pip install -e .)"
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "mytiny.py").write_text(MYTINY)
    return tmp_path


def pickle_tiny(folder: Path) -> Path:
    """torch.save of a module whose class lives in `mytiny` (the folder's mytiny.py)."""
    spec = importlib.util.spec_from_file_location("mytiny", folder / "mytiny.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mytiny"] = module
    try:
        spec.loader.exec_module(module)
        torch.save(module.make(), folder / "tiny.pt")
    finally:
        del sys.modules["mytiny"]
    (folder / "ran").unlink()
    return folder / "tiny.pt"


def test_trust_finds_the_pickled_class_in_the_current_folder(folder: Path) -> None:
    # Before: "needs the model's source code to load (No module named 'mytiny'); run from a folder
    # where it can be imported", while the user was in that folder.
    pickle_tiny(folder)
    done = console_script("tiny.pt", "--trust", "--input-shape", "3,4,4", "--format", "json",
                          cwd=folder)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["params"], report["mults"], report["adds"]) == (
        TINY_PARAMS / 2, TINY_MULTS, TINY_ADDS)  # 16-bit freebie: 8 values count 4


def test_loading_with_trust_leaves_the_import_path_as_it_was(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pickle_tiny(folder)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    monkeypatch.delitem(sys.modules, "mytiny", raising=False)
    before = list(sys.path)
    loaded = load_model("tiny.pt", trust=True)
    assert type(loaded.module).__module__ == "mytiny"
    assert sys.path == before
    sys.modules.pop("mytiny")


def test_a_module_factory_is_found_in_the_current_folder(folder: Path) -> None:
    # Before: "cannot import 'mytiny': ModuleNotFoundError: No module named 'mytiny'".
    done = console_script("mytiny:make", "--input-shape", "3,4,4", "--format", "json", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mults"] == TINY_MULTS


def test_an_installed_package_wins_over_a_local_file_of_its_name(folder: Path) -> None:
    # The current folder comes last on the import path: `rich:build` imports the installed rich
    # (which draws the table), and the error says how to name the local file instead.
    (folder / "rich.py").write_text("def build():\n    raise SystemExit('must not run')\n")
    done = console_script("rich:build", "--input-shape", "3,4,4", cwd=folder)
    assert done.returncode == 2
    assert done.stderr == (
        "error: 'rich' has no callable named 'build'; the installed 'rich' comes before "
        "./rich.py on the import path, so give the file itself: rich.py:build\n"
    )


def test_a_python_file_without_its_function_is_explained(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "cannot read mytiny.py: not a PyTorch file, or damaged".
    monkeypatch.chdir(folder)
    advice = ("mytiny.py is Python source; give the factory as mytiny.py:function "
              "(functions in it: make, build; classes in it: Tiny)")
    with pytest.raises(UserError) as as_model:
        load_model("mytiny.py")
    with pytest.raises(UserError) as as_arch:
        build_from_factory("mytiny.py")
    assert str(as_model.value) == str(as_arch.value) == advice
    assert not (folder / "ran").exists()


def test_a_python_file_that_does_not_parse_still_gets_the_advice(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def make(:\n")
    with pytest.raises(UserError) as error:
        load_model(str(broken))
    assert str(error.value) == f"{broken} is Python source; give the factory as {broken}:function"


def export(tmp_path: Path, name: str, **dynamic: dict[int, torch.export.Dim]) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    program = torch.export.export(model, (torch.zeros(1, 3, 32, 32),),
                                  dynamic_shapes=dynamic or None)
    torch.export.save(program, tmp_path / name)
    return tmp_path / name


def test_a_program_exported_at_a_fixed_shape_says_so(tmp_path: Path) -> None:
    # Before: "node '_guards_fn' (module 'conv') failed with AssertionError: Guard failed:
    # x.size()[2] == 32".
    loaded = load_model(str(export(tmp_path, "fixed.pt2")))
    with pytest.raises(UserError) as error:
        score_model(loaded.module, input_shape=(3, 64, 64))
    assert str(error.value) == (
        "the program was exported at a fixed input shape 3x32x32 and cannot run at 3x64x64; omit "
        "--input-shape to score it at its own shape, or export it with dynamic sizes: "
        "torch.export.export(model, (input,), dynamic_shapes={'input': "
        "{2: torch.export.Dim('height'), 3: torch.export.Dim('width')}})"
    )
    assert score_model(loaded.module, input_shape=loaded.recorded_shape).mults == 3 * 2 * 32 * 32


def test_a_program_exported_with_dynamic_sizes_scores_at_another_shape(tmp_path: Path) -> None:
    # The advice above, followed (the safe reader rebuilds the symbolic sizes).
    sizes = {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    loaded = load_model(str(export(tmp_path, "dynamic.pt2", input=sizes)))
    report = score_model(loaded.module, input_shape=(3, 64, 64))
    assert (report.mults, report.adds) == (3 * 2 * 64 * 64, 3 * 2 * 64 * 64)
    assert report.warnings == (
        "the model was scored at input 3x64x64, baseline 'wrn' at 3x32x32: the score compares "
        "costs at different input sizes",
    )


def test_a_program_exported_at_another_batch_size_says_so() -> None:
    program = torch.export.export(nn.Sequential(nn.Conv2d(3, 2, 1)), (torch.zeros(2, 3, 4, 4),))
    with pytest.raises(UserError) as error:
        score_model(program)
    assert str(error.value) == (
        "the program was exported at a fixed batch size of 2 (input 2x3x4x4) and is scored at "
        "batch size 1; export it with a batch of 1, or with torch.export.export(model, (input,), "
        "dynamic_shapes={'input': {0: torch.export.Dim('batch')}})"
    )


IMAGENET_AT_32 = (
    "the feature map entering the last global pooling (adaptive_avg_pool2d) is 1x1 at input "
    "3x32x32: the model looks built for larger inputs; score it at its own size, e.g. "
    "--input-shape 3,224,224 --baseline mobilenetv2"
)
THOUSAND_CLASSES = (
    "the classifier (classifier.1) gives 1000 outputs, while baseline 'wrn' is for CIFAR-100 "
    "(100 classes); if the model is for another data set, a baseline for 1000 classes may fit "
    "better: mobilenetv2"
)


def test_an_imagenet_model_at_cifar_size_is_flagged() -> None:
    model = torchvision.models.mobilenet_v2().eval()  # random weights, nothing downloaded
    report = score_model(model, input_shape=(3, 32, 32), baseline="wrn")
    assert report.warnings == (IMAGENET_AT_32, THOUSAND_CLASSES)


def test_an_imagenet_model_at_its_size_and_baseline_is_not_flagged() -> None:
    model = torchvision.models.mobilenet_v2().eval()
    report = score_model(model, input_shape=(3, 224, 224), baseline="mobilenetv2")
    assert report.warnings == ()


def test_a_cifar10_model_against_the_cifar100_baseline_gets_a_mild_note() -> None:
    report = score_model(create_model("resnet18").eval(), input_shape=(3, 32, 32), baseline="wrn")
    assert report.warnings == (
        "the classifier (linear) gives 10 outputs, while baseline 'wrn' is for CIFAR-100 (100 "
        "classes); if the model is for another data set, a baseline for 10 classes may fit "
        "better: resnet18-imt (with --rules imt-2022), resnet18-imt-2024 (with --rules imt-2024)",
    )


@pytest.mark.parametrize("rules", ["imt-2022", "imt-2024"])
def test_the_course_setup_is_not_flagged(rules: str) -> None:
    # A CIFAR-10 ResNet-18 under the course's rules and their own CIFAR-10 baselines.
    assert score_model(create_model("resnet18").eval(), rules=rules).warnings == ()


def test_other_global_poolings_are_read_too() -> None:
    # shufflenet pools with x.mean([2, 3]); vgg with AdaptiveAvgPool2d((7, 7)) over a 1x1 map.
    for build, pooling in ((torchvision.models.shufflenet_v2_x0_5, "mean"),
                           (torchvision.models.vgg11, "avgpool")):
        warnings = score_model(build().eval(), input_shape=(3, 32, 32)).warnings
        assert warnings[0] == IMAGENET_AT_32.replace("adaptive_avg_pool2d", pooling)


def test_the_warnings_reach_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from micronet_score.cli import score_app
    from micronet_score.cli_support import run_app

    for fmt in ("json", "csv", "markdown", "table"):
        target = tmp_path / f"report.{fmt}"
        code = run_app(score_app, ["torchvision.models:mobilenet_v2", "--format", fmt,
                                   "--output", str(target)], "micronet-score")
        assert code == 0
        lines = capsys.readouterr().err.splitlines()
        assert lines == [f"warning: {IMAGENET_AT_32}", f"warning: {THOUSAND_CLASSES}"], fmt
        text = " ".join(target.read_text().split())  # the table wraps long lines
        if fmt == "json":
            assert json.loads(text)["warnings"] == [IMAGENET_AT_32, THOUSAND_CLASSES]
        elif fmt != "csv":
            assert IMAGENET_AT_32 in text and THOUSAND_CLASSES in text, fmt


def test_arch_with_a_whole_model_is_refused_not_ignored(tmp_path: Path) -> None:
    from micronet_score.errors import UserError
    from micronet_score.loading import load_model

    sample = Path(__file__).parents[1] / "sample_models" / "densenet121_gr4_cifar.pt2"
    with pytest.raises(UserError, match="holds an exported program, which needs no --arch"):
        load_model(str(sample), arch="torchvision.models:resnet18")
    with pytest.raises(UserError, match="needs no --arch-kwargs"):
        load_model(str(sample), arch_kwargs={"width": 2})


def test_a_program_exported_for_a_size_range_is_scored_only_inside_it(tmp_path: Path) -> None:
    """One `Dim` shared by height and width makes strides powers of it (3*s**2), which the safe
    reader must accept; sizes outside the exported range are refused, as torch's guards do."""
    from micronet_score import score_model
    from micronet_score.errors import UserError
    from micronet_score.loading import load_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    side = torch.export.Dim("side", min=8, max=512)
    program = torch.export.export(model, (torch.zeros(1, 3, 32, 32),),
                                  dynamic_shapes=({2: side, 3: side},))
    path = tmp_path / "ranged.pt2"
    torch.export.save(program, path)
    loaded = load_model(str(path))
    assert loaded.recorded_shape == (3, 32, 32)
    at_64 = score_model(loaded.module, input_shape=(3, 64, 64), freebie=False)
    # conv: 27 mults and 26 + 1 adds per output, 4x64x64 outputs; relu: 1 op per output.
    assert (at_64.mults, at_64.adds) == (27 * 4 * 64 * 64 + 4 * 64 * 64, 27 * 4 * 64 * 64)
    for size in (600, 4):
        with pytest.raises(UserError, match=f"dimension 2 is {size}, but the program was "
                                            "exported for sizes 8 to 512"):
            score_model(loaded.module, input_shape=(3, size, size))
    score_model(program, input_shape=(3, 16, 16))  # the caller's program is left as it was
    assert tuple(program.module()(torch.zeros(1, 3, 64, 64)).shape) == (1, 4, 64, 64)
