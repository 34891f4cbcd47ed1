"""int8 post-training quantization: what is quantized and what is skipped, closeness to the float
model, the saved files as the scorer loads them, and refusing unconverted models.

Tolerances. Rounding to a grid of step ``range / levels`` adds uniform noise of rms
``step / sqrt(12)``; relative to a tensor whose range is RANGE_OVER_RMS = 8 times its rms (about
+-4 sigma for the Gaussian test data, which the histogram observer may clip a little), that is
``8 / (levels * sqrt(12))``: 1.8% with FX's 7-bit activations (reduce_range, 127 levels) and
0.9% with PT2E's 8 bits. The small net rounds three tensors on any path (input, hidden
activation, weights), independent noises adding in quadrature, so its relative output error is
about sqrt(3) times that; the tests allow twice the estimate. A real fault (a missing
dequantize, a wrong scale, a float weight read as int8) is off by 100% or more.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.nn import intrinsic as nni
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq
from torch.ao.quantization import QConfigMapping
from torch.ao.quantization.quantize_fx import prepare_fx

from micronet_score.compress.models import create_model
from micronet_score.compress.quantize import (
    QuantizationError,
    calibration_inputs,
    export_converted,
    fx_qconfig,
    quantize_fx,
    quantize_pt2e,
    save_fx_quantized,
    save_pt2e,
)
from micronet_score.errors import UserError
from micronet_score.loading import load_model

# torch.ao, its observers, quantized tensors and their storages all warn that they are
# deprecated (they still work), and quantized cat that its inputs' scales differ (DenseNet FX).
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
    pytest.mark.filterwarnings("ignore:TypedStorage is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:All inputs of this cat operator:UserWarning"),
]

RANGE_OVER_RMS = 8
DENSENET_SKIP = ("trans3", "dense1", "dense2")
Q = torch.ops.quantized_decomposed


def _noise(levels: int, tensors: int) -> float:
    """Expected relative rms error of ``tensors`` rounded tensors (see the module docstring)."""
    return math.sqrt(tensors) * RANGE_OVER_RMS / (levels * math.sqrt(12))


FX_TOLERANCE = 2 * _noise(127, 3)  # 6.3%
PT2E_TOLERANCE = 2 * _noise(255, 3)  # 3.1%


class SmallNet(nn.Module):
    """conv-bn-relu stem (FX and PT2E fold the bn), a conv-relu block, a pooling linear head.

    Every op sits in a child module: an op in the root's own forward belongs to no child, so no
    skip name could keep it float.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.block(self.stem(x)))
        return out


def _small_net() -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():  # BatchNorm statistics away from the identity, so folding matters
        bn = net.stem[1]
        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return net


def _images(count: int, size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=generator) for _ in range(count)]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_calibration_inputs_takes_the_images_of_the_first_batches() -> None:
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(5)]
    inputs = calibration_inputs(batches, 3)
    assert [float(t[0, 0]) for t in inputs] == [0.0, 1.0, 2.0]


def test_fx_quantizes_all_but_the_skipped_block() -> None:
    net = _small_net()
    before = _snapshot(net)
    engine = torch.backends.quantized.engine
    quantized = quantize_fx(net, _images(2), skip=("block",))
    assert _unchanged(net, before) and not net.training
    assert torch.backends.quantized.engine == engine

    # conv-bn-relu fused and int8; the skipped conv-relu fused but float, weights untouched.
    stem = quantized.get_submodule("stem.0")
    assert type(stem) is nniq.ConvReLU2d
    block = quantized.get_submodule("block.0")
    assert type(block) is nni.ConvReLU2d and type(block[0]) is nn.Conv2d
    assert torch.equal(block[0].weight, net.block.get_parameter("0.weight"))
    head = quantized.get_submodule("head.2")
    assert type(head) is nnq.Linear
    for module in (stem, head):
        weight = module.weight()  # type: ignore[no-untyped-call]
        assert weight.dtype == torch.qint8
        # Symmetric per channel: one scale per output channel, every zero point 0.
        assert weight.q_per_channel_scales().numel() == weight.shape[0]
        assert weight.q_per_channel_zero_points().count_nonzero() == 0

    (images,) = _images(1, seed=1)
    with torch.no_grad():
        error = _relative_error(quantized(images), net(images))
    assert error <= FX_TOLERANCE


def test_fx_with_every_module_skipped_is_the_float_model() -> None:
    net = _small_net()
    quantized = quantize_fx(net, _images(1), skip=("stem", "block", "head"), backend="x86")
    assert not any(isinstance(m, nnq.Conv2d | nnq.Linear) for m in quantized.modules())
    (images,) = _images(1, seed=1)
    with torch.no_grad():
        # Only the bn folded into the stem conv changes the float rounding.
        torch.testing.assert_close(quantized(images), net(images))


def test_fx_densenet_skip_list_and_saved_file(tmp_path: Path) -> None:
    """The bundled cifar10 recipe's quantize stage on its model: trans3, dense1 and dense2
    float, everything else int8."""
    from micronet_score.compress.recipe import QuantizeStage, load_recipe

    recipe = load_recipe("cifar10")
    stage = recipe.stages[-1]
    assert isinstance(stage, QuantizeStage)
    assert (recipe.model, stage.method, stage.skip) == ("densenet121_gr4_g2", "fx", DENSENET_SKIP)
    torch.manual_seed(0)
    model = create_model(recipe.model).eval()
    assert set(DENSENET_SKIP) <= {name for name, _ in model.named_children()}
    quantized = quantize_fx(model, _images(2, size=32), skip=stage.skip, backend=stage.backend)

    int8 = [n for n, m in quantized.named_modules() if isinstance(m, nnq.Conv2d)]
    float32 = [n for n, m in quantized.named_modules() if type(m) is nn.Conv2d]
    # Stages of 6, 12, 24, 16 bottleneck layers, 2 convs each, plus the stem and 3 transitions:
    # int8 are conv1, trans1, trans2 and dense3/dense4's 2*(24+16) = 80; float are
    # dense1/dense2's 2*(6+12) = 36 and trans3.
    assert len(int8) == 83 and len(float32) == 37
    assert {n.split(".")[0] for n in int8} == {"conv1", "trans1", "trans2", "dense3", "dense4"}
    assert {n.split(".")[0] for n in float32} == set(DENSENET_SKIP)
    quantized_convs = [m for m in quantized.modules() if isinstance(m, nnq.Conv2d)]
    assert {m.weight().dtype for m in quantized_convs} == {torch.qint8}  # type: ignore[no-untyped-call]
    assert type(quantized.get_submodule("linear")) is nnq.Linear

    (images,) = _images(1, size=32, seed=1)
    with torch.no_grad():
        expected = quantized(images)
        # Concatenation passes features on unchanged and pooling averages, so errors do not
        # compound with depth and the small net's bound holds (measured: 0.55%).
        assert _relative_error(expected, model(images)) <= FX_TOLERANCE

    path = tmp_path / "densenet_int8.pt"
    save_fx_quantized(quantized, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = torch.load(path, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(images), expected)
    with pytest.raises(UserError, match="--trust"):
        load_model(str(path))
    assert isinstance(load_model(str(path), trust=True).module, torch.fx.GraphModule)


def test_saving_a_prepared_but_unconverted_fx_model_is_refused(tmp_path: Path) -> None:
    (images,) = _images(1)
    prepared = prepare_fx(
        _small_net(), QConfigMapping().set_global(fx_qconfig()), example_inputs=(images,)
    )
    prepared(images)
    with pytest.raises(QuantizationError, match="prepared but not converted"):
        save_fx_quantized(prepared, tmp_path / "prepared.pt")
    assert not (tmp_path / "prepared.pt").exists()


def test_bad_calibration_or_skip_names_are_refused() -> None:
    net = _small_net()
    with pytest.raises(QuantizationError, match="no calibration batches"):
        quantize_fx(net, [])
    with pytest.raises(QuantizationError, match="cannot skip blok: no such module"):
        quantize_fx(net, _images(1), skip=("blok",))
    with pytest.raises(QuantizationError, match="top-level modules are: stem, block, head"):
        quantize_pt2e(net, _images(1), skip=("blok",))


def _conv_inputs(program: torch.export.ExportedProgram) -> dict[str, tuple[object, object]]:
    """For each conv and linear: the op feeding its input and, for float weights, the parameter
    name, else the op feeding the weight."""
    parameters = program.graph_signature.inputs_to_parameters
    found: dict[str, tuple[object, object]] = {}
    for node in program.graph.nodes:
        if node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            data, weight = node.args[:2]
            assert isinstance(data, torch.fx.Node) and isinstance(weight, torch.fx.Node)
            found[node.name] = (data.target, parameters.get(weight.name, weight.target))
    return found


def test_pt2e_puts_quantize_dequantize_around_all_but_the_skipped_conv(tmp_path: Path) -> None:
    net = _small_net()
    before = _snapshot(net)
    program = quantize_pt2e(net, _images(2), skip=("block",))
    assert _unchanged(net, before)
    assert _conv_inputs(program) == {
        "conv2d": (Q.dequantize_per_tensor.default, Q.dequantize_per_channel.default),
        "conv2d_1": (torch.ops.aten.relu.default, "block.0.weight"),
        "linear": (Q.dequantize_per_tensor.default, Q.dequantize_per_channel.default),
    }
    # Quantized weights are stored as int8; the float ones they replace are gone.
    int8 = [
        node.args[0].meta["val"]
        for node in program.graph.nodes
        if node.target == Q.dequantize_per_channel.default
    ]
    assert [(t.dtype, tuple(t.shape)) for t in int8] == [
        (torch.int8, (8, 3, 3, 3)), (torch.int8, (4, 8)),
    ]
    assert set(program.graph_signature.inputs_to_parameters.values()) == {
        "stem.0.bias", "block.0.weight", "block.0.bias", "head.2.bias",
    }
    # Every activation quantize is followed by its dequantize with the same parameters.
    for node in program.graph.nodes:
        if node.target == Q.quantize_per_tensor.default:
            (user,) = node.users
            assert user.target == Q.dequantize_per_tensor.default
            assert user.args[1:] == node.args[1:]

    (images,) = _images(1, seed=1)
    with torch.no_grad():
        expected = program.module()(images)
        assert _relative_error(expected, net(images)) <= PT2E_TOLERANCE

    path = tmp_path / "small_int8.pt2"
    save_pt2e(program, path)
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        assert torch.equal(loaded(images), expected)
        assert loaded(images[:3]).shape == (3, 4)  # the batch dimension was left free
    assert load_model(str(path)).recorded_shape == (3, 8, 8)


def test_exporting_a_prepared_but_unconverted_pt2e_model_is_refused() -> None:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    (images,) = _images(1)
    captured = torch.export.export(_small_net(), (images,)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(captured, quantizer)
    prepared(images)
    with pytest.raises(QuantizationError, match="prepared but not converted"):
        export_converted(prepared, (images,))


class SharedStemNet(nn.Module):
    """A DenseNet's start: the stem conv's output feeds a BatchNorm and a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out: torch.Tensor = self.head(torch.cat([self.conv(torch.relu(self.bn(x))), x], 1))
        return out


def test_pt2e_keeps_a_batchnorm_on_a_shared_conv_output_separate() -> None:
    # Folding that BatchNorm into the stem would feed the concatenation its output (error ~116%).
    torch.manual_seed(0)
    net = SharedStemNet().eval()
    with torch.no_grad():  # a BatchNorm far from the identity, as after training
        assert net.bn.running_mean is not None and net.bn.running_var is not None
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 2.0)
        net.bn.bias.uniform_(-1.0, 1.0)
    program = quantize_pt2e(net, _images(2))
    (images,) = _images(1, seed=1)
    with torch.no_grad():
        # Rounded: input, stem weight, stem output, BatchNorm-relu output, conv weight.
        assert _relative_error(program.module()(images), net(images)) <= 2 * _noise(255, 5)


@pytest.mark.slow
def test_pt2e_densenet_skip_list(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("densenet121_gr4").eval()
    program = quantize_pt2e(model, _images(2, size=32), skip=DENSENET_SKIP)
    inputs = _conv_inputs(program).values()
    int8 = [i for i in inputs if i == (Q.dequantize_per_tensor.default,
                                        Q.dequantize_per_channel.default)]
    float32 = [weight for _, weight in inputs if isinstance(weight, str)]
    # The same 83 convs plus the linear as under FX; the 37 skipped convs read float weights.
    assert len(int8) == 84 and len(float32) == 37
    assert {name.split(".")[0] for name in float32} == set(DENSENET_SKIP)

    (images,) = _images(1, size=32, seed=1)
    with torch.no_grad():
        expected = program.module()(images)
        assert _relative_error(expected, model(images)) <= PT2E_TOLERANCE
    path = tmp_path / "densenet_int8.pt2"
    save_pt2e(program, path)
    with torch.no_grad():
        assert torch.equal(torch.export.load(path).module()(images), expected)
