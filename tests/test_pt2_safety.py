"""A tampered .pt2 never runs code; bad archives and code-bearing pickles get one line and exit 2.

Each case rewrites one part of a small exported program (a dynamic batch dimension, so the JSON
holds symbolic sizes and range constraints) to do what an attacker would: replace a member by a
pickle whose `__reduce__` touches a canary file, or give a string that torch evaluates some code.
`test_the_corpus_runs_code_under_torch_export_load` shows the same files do run code when given
to `torch.export.load`, which the loader called before.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from micronet_score import UserError, score_model
from micronet_score.cli import main
from micronet_score.loading import _load_exported, load_model
from micronet_score.pt2 import load

MEMBERS = [
    *(f"data/weights/weight_{i}" for i in range(9)),
    "data/weights/model_weights_config.json", "data/constants/model_constants_config.json",
    "models/model.json", "data/sample_inputs/model.pt", "archive_format", "archive_version",
    ".data/version", "byteorder", ".data/serialization_id",
]
MODEL, WEIGHTS, CONSTANTS = "models/model.json", MEMBERS[9], MEMBERS[10]
INPUTS = "data/sample_inputs/model.pt"
SYMBOL = "Symbol('s77', positive=True, integer=True)"
Files = dict[str, bytes]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
        return out


class Corpus:
    """The untampered archive's members, and the canary that proves code ran."""

    def __init__(self, folder: Path) -> None:
        batch = torch.export.Dim("batch", min=2, max=64)
        program = torch.export.export(Net().eval(), (torch.zeros(2, 3, 8, 8),),
                                      dynamic_shapes={"x": {0: batch}})
        self.folder, self.base, self.canary = folder, folder / "base.pt2", folder / "ran"
        torch.export.save(program, self.base)
        with zipfile.ZipFile(self.base) as archive:
            self.root = archive.namelist()[0].split("/")[0]
            self.files = {i.filename.split("/", 1)[1]: archive.read(i) for i in archive.infolist()}
        self.code = f"__import__('pathlib').Path({str(self.canary)!r}).touch()"
        # A module next to the file, importable by name: what a tree spec could make torch import.
        (folder / "canary_module.py").write_text(
            f"{self.code}\nimport enum\n\n\nclass Kind(enum.Enum):\n    A = 1\n")

    def write(self, name: str, change: Callable[[Files], None]) -> Path:
        files = dict(self.files)
        change(files)
        path = self.folder / f"{name}.pt2"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for member, data in files.items():
                archive.writestr(f"{self.root}/{member}", data)
        return path

    def torch_pickle(self) -> bytes:
        return saved(Touch(self.code))

    def raw_pickle(self) -> bytes:
        return pickle.dumps(Touch(self.code), protocol=2)


class Touch:
    """Unpickling this evaluates code that touches the canary."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, (self.code,))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    folder = tmp_path_factory.mktemp("pt2")
    sys.path.insert(0, str(folder))
    try:
        yield Corpus(folder)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("canary_module", None)


@pytest.fixture
def canary(corpus: Corpus) -> Iterator[Path]:
    corpus.canary.unlink(missing_ok=True)
    sys.modules.pop("canary_module", None)
    torch.utils._pytree.treespec_loads.cache_clear()  # a cached spec would not import again
    yield corpus.canary
    corpus.canary.unlink(missing_ok=True)


def refused(path: Path, capfd: pytest.CaptureFixture[str]) -> str:
    """The one-line UserError for `path`, checked through the CLI too (exit 2, one line)."""
    with pytest.raises(UserError) as caught:
        load_model(str(path))
    message = str(caught.value)
    with pytest.raises(SystemExit) as exited:
        main([str(path), "--format", "json"])
    out, err = capfd.readouterr()
    assert exited.value.code == 2
    assert (out, err) == ("", f"error: {message}\n")  # nothing from torch, one line from us
    assert "\n" not in message
    return message


def edit_json(member: str, change: Callable[[Any], object]) -> Callable[[Files], None]:
    def edit(files: Files) -> None:
        document = json.loads(files[member])
        change(document)
        files[member] = json.dumps(document).encode()
    return edit


def graph(document: Any) -> Any:
    return document["graph_module"]["graph"]


def signature(document: Any) -> Any:
    return document["graph_module"]["module_call_graph"][0]["signature"]


def first_node(document: Any) -> Any:
    return graph(document)["nodes"][0]


def input_spec(context: str) -> Callable[[Any], object]:
    """An in_spec whose keyword-argument dict has `context` for its keys."""
    leaf: dict[str, Any] = {"type": None, "context": None, "children_spec": []}
    spec = [1, {"type": "builtins.tuple", "context": "null", "children_spec": [
        {"type": "builtins.tuple", "context": "null", "children_spec": [leaf]},
        {"type": "builtins.dict", "context": context, "children_spec": []},
    ]}]
    return lambda d: signature(d).update(in_spec=json.dumps(spec))


def pickled_weight(corpus: Corpus, files: Files) -> None:
    edit_json(WEIGHTS, lambda d: d["config"]["conv.bias"].update(use_pickle=True))(files)
    files["data/weights/weight_1"] = corpus.torch_pickle()


def pickled_object(kind: str) -> Callable[[Corpus, Files], None]:
    def tamper(corpus: Corpus, files: Files) -> None:
        entry = {"path_name": f"{kind}_0", "is_param": False, "use_pickle": True,
                 "tensor_meta": None}
        edit_json(CONSTANTS, lambda d: d["config"].update(table=entry))(files)
        files[f"data/constants/{kind}_0"] = corpus.raw_pickle()
    return tamper


def saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def odd_input_key(corpus: Corpus, files: Files) -> None:
    # A weights-only pickle, but its key would land in the guard code torch generates.
    key = f"x'] or {corpus.code} or L['x"
    files[INPUTS] = saved(((torch.zeros(2, 3, 8, 8),), {key: torch.zeros(1)}))


def stack_trace(code: str) -> Callable[[Any], object]:
    trace = f'File "model.py", line 1, in forward\n    x\r{code}\r'
    return lambda d: first_node(d)["metadata"].update(stack_trace=trace)


# Each string torch evaluates (exec, sympify, importlib, getattr by name, generated code), given
# code; and the members torch unpickles with weights_only=False, given a pickle.
EVALUATED: dict[str, Callable[[Corpus, Files], None]] = {
    "guards_code": lambda c, f: edit_json(MODEL, lambda d: d.update(
        guards_code=[f"{c.code} is None"]))(f),
    "sym_size": lambda c, f: edit_json(MODEL, lambda d: graph(d)["tensor_values"]["x"]["sizes"][0][
        "as_expr"].update(expr_str=f"({c.code}, {SYMBOL})[1]"))(f),
    "sym_size_symbol_name": lambda c, f: edit_json(MODEL, lambda d: graph(d)["tensor_values"][
        "x"]["sizes"][0]["as_expr"].update(expr_str=f"Symbol({c.code!r})"))(f),
    "range_constraint": lambda c, f: edit_json(MODEL, lambda d: d.update(
        range_constraints={c.code: {"min_val": 2, "max_val": 64}}))(f),
    "in_spec_enum_import": lambda c, f: edit_json(MODEL, input_spec(json.dumps(
        [{"__enum__": True, "fqn": "canary_module:Kind", "name": "A"}])))(f),
    "in_spec_defaultdict_import": lambda c, f: edit_json(MODEL, lambda d: signature(d).update(
        in_spec=json.dumps([1, {"type": "collections.defaultdict", "context": json.dumps({
            "default_factory_module": "canary_module", "default_factory_name": "Kind",
            "dict_context": []}), "children_spec": []}])))(f),
    "node_target": lambda c, f: edit_json(MODEL, lambda d: first_node(d).update(
        target="torch.serialization.load"))(f),
    "node_target_dunder": lambda c, f: edit_json(MODEL, lambda d: first_node(d).update(
        target="torch.ops.aten.__class__.__call__"))(f),
    "source_fn_stack": lambda c, f: edit_json(MODEL, lambda d: first_node(d)["metadata"].update(
        source_fn_stack=f"conv2d,{c.code}"))(f),
    "stack_trace": lambda c, f: edit_json(MODEL, stack_trace(c.code))(f),
    "custom_metadata": lambda c, f: edit_json(MODEL, lambda d: first_node(d)["metadata"].update(
        custom=json.dumps({"note": f"\r{c.code}\r"})))(f),
    "node_name": lambda c, f: edit_json(MODEL, lambda d: first_node(d).update(
        name=f"conv = {c.code}; conv2d"))(f),
    "graph_input_name": lambda c, f: edit_json(MODEL, lambda d: graph(d)["inputs"][-1][
        "as_tensor"].update(name=f"x=({c.code})"))(f),
    "forward_arg_names": lambda c, f: edit_json(MODEL, lambda d: signature(d).update(
        forward_arg_names=[f"x=({c.code})"]))(f),
    "string_argument": lambda c, f: edit_json(MODEL, lambda d: first_node(d)["inputs"][-1].update(
        arg={"as_string": f"'+{c.code}+'"}))(f),
    "verifier": lambda c, f: edit_json(MODEL, lambda d: d.update(verifiers=[c.code]))(f),
    "device": lambda c, f: edit_json(MODEL, lambda d: graph(d)["tensor_values"]["x"][
        "device"].update(type=c.code))(f),
    "unknown_field": lambda c, f: edit_json(MODEL, lambda d: first_node(d).update(
        hook=c.code))(f),
    "sample_inputs_key": odd_input_key,
    "sample_inputs_structure": lambda c, f: f.update({INPUTS: saved(
        ((torch.zeros(2, 3, 8, 8), torch.zeros(1)), {}))}),
    "pickled_weight": pickled_weight,
    "opaque_object_constant": pickled_object("opaque_obj"),
    "torchscript_object_constant": pickled_object("custom_obj"),
}
# The cases above in which torch.export.load (and .module(), as the loader called) ran the code.
LIVE = ["guards_code", "sym_size", "in_spec_enum_import", "pickled_weight",
        "opaque_object_constant"]


def test_the_corpus_matches_what_torch_export_save_writes(corpus: Corpus) -> None:
    assert sorted(corpus.files) == sorted(MEMBERS)


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_a_member_replaced_by_a_pickle_never_runs(
    corpus: Corpus, canary: Path, capfd: pytest.CaptureFixture[str], member: str, kind: str
) -> None:
    payload = corpus.torch_pickle() if kind == "torch.save" else corpus.raw_pickle()
    path = corpus.write(f"{kind}-{member.replace('/', '_')}", lambda f: f.update({member: payload}))
    assert f": {member}: " in refused(path, capfd)
    assert not canary.exists()


@pytest.mark.parametrize("case", list(EVALUATED))
def test_code_in_an_evaluated_field_never_runs(
    corpus: Corpus, canary: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    path = corpus.write(case, lambda files: EVALUATED[case](corpus, files))
    message = refused(path, capfd)
    assert message.startswith(f"{path} is not a plain torch.export.save archive: ")
    assert message.endswith("; pass --trust only if you trust its origin")
    assert not canary.exists()


@pytest.mark.parametrize("case", LIVE)
def test_the_corpus_runs_code_under_torch_export_load(
    corpus: Corpus, canary: Path, case: str
) -> None:
    path = corpus.write(case, lambda files: EVALUATED[case](corpus, files))
    with contextlib.suppress(Exception):  # the tampered program need not work once code ran
        torch.export.load(path).module()(torch.zeros(2, 3, 8, 8))
    assert canary.exists()


def test_a_pickled_weight_names_the_refused_global(
    corpus: Corpus, canary: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = corpus.write("named", lambda files: pickled_weight(corpus, files))
    assert refused(path, capfd) == (
        f"{path} is not a plain torch.export.save archive: data/weights/weight_1: contains a "
        "pickled reference to 'builtins.eval', which could run code; pass --trust only if you "
        "trust its origin"
    )


def test_extra_files_are_allowed_and_never_read(corpus: Corpus) -> None:
    path = corpus.write("extra", lambda files: files.update({"extra/notes.txt": b"\x80\x02."}))
    assert str(load(path).graph) == str(load(corpus.base).graph)


def test_an_untampered_archive_loads_as_torch_export_load_does(corpus: Corpus) -> None:
    ours, theirs = load(corpus.base), torch.export.load(corpus.base)
    assert str(ours.graph) == str(theirs.graph)
    assert ours.range_constraints == theirs.range_constraints
    assert ours.state_dict.keys() == theirs.state_dict.keys()
    for name, tensor in theirs.state_dict.items():
        assert type(ours.state_dict[name]) is type(tensor)
        assert torch.equal(ours.state_dict[name], tensor)
    assert str(ours.module().code) == str(theirs.module().code)
    assert _load_exported(corpus.base, trust=True).graph_signature == theirs.graph_signature


def damaged(corpus: Corpus) -> dict[str, Path]:
    truncated = corpus.folder / "truncated.pt2"
    truncated.write_bytes(corpus.base.read_bytes()[:3000])
    return {
        "truncated": truncated,
        "junk": corpus.write("junk", lambda f: f.update({"notes/readme.txt": b"hello"})),
        "newer": corpus.write("newer", lambda f: f.update({"archive_version": b"1"})),
        "broken_json": corpus.write("broken", lambda f: f.update({MODEL: f[MODEL][:-9]})),
    }


@pytest.mark.parametrize("kind", ["truncated", "junk", "newer", "broken_json"])
def test_a_damaged_archive_is_one_line(
    corpus: Corpus, capfd: pytest.CaptureFixture[str], kind: str
) -> None:
    path = damaged(corpus)[kind]
    message = refused(path, capfd)
    assert message.startswith((f"cannot read {path}: ", f"{path} is "))


def test_loading_prints_nothing_from_torch(corpus: Corpus) -> None:
    """In a fresh process, where torch's log handler writes to stderr: with --trust too, which
    hands the file to torch.export.load (it logs a 20-line traceback on a truncated file)."""
    script = (
        "import sys\n"
        "from micronet_score.errors import UserError\n"
        "from micronet_score.loading import load_model\n"
        "for path in sys.argv[1:]:\n"
        "    for trust in (False, True):\n"
        "        try:\n"
        "            load_model(path, trust=trust)\n"
        "            print('loaded')\n"
        "        except UserError as error:\n"
        "            print(f'{len(str(error).splitlines())} line')\n"
    )
    paths = damaged(corpus)
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths.values())],
                          capture_output=True, text=True, timeout=120)
    assert done.stderr == ""
    outcomes = dict(zip([(kind, trust) for kind in paths for trust in (False, True)],
                        done.stdout.splitlines(), strict=True))
    assert outcomes == {  # torch.export.load ignores members it does not know
        (kind, trust): "loaded" if (kind, trust) == ("junk", True) else "1 line"
        for kind in paths for trust in (False, True)
    }


def test_junk_members_are_refused_by_name(
    corpus: Corpus, capfd: pytest.CaptureFixture[str]
) -> None:
    path = corpus.write("junk", lambda files: files.update({"notes/readme.txt": b"hello"}))
    assert refused(path, capfd) == (
        f"{path} is not a plain torch.export.save archive: notes/readme.txt: is not part of what "
        "torch.export.save writes for a model; pass --trust only if you trust its origin"
    )
    only_junk = corpus.folder / "only_junk.pt2"
    with zipfile.ZipFile(only_junk, "w") as archive:
        archive.writestr("a/b\n.bin", b"\x00" * 10)
    assert "'b\\n.bin': is not part of what torch.export.save" in refused(only_junk, capfd)


def test_a_newer_format_version_is_refused(
    corpus: Corpus, capfd: pytest.CaptureFixture[str]
) -> None:
    newer = corpus.write("newer", lambda files: files.update({"archive_version": b"1"}))
    assert refused(newer, capfd) == (
        f"{newer} is a .pt2 archive of format version 1, which this loader cannot read "
        f"(PyTorch {torch.__version__} writes version 0); export the model again with this PyTorch"
    )
    schema = corpus.write("schema", edit_json(MODEL, lambda d: d.update(
        schema_version={"major": 9, "minor": 0})))
    assert "was written with export schema 9.0" in refused(schema, capfd)


class System:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_code_bearing_pickle_names_its_global(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], writer: str
) -> None:
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"model": System()}, path)
    else:  # protocol 4: torch's weights-only unpickler cannot read it, so its message names nothing
        path.write_bytes(pickle.dumps({"model": System()}, protocol=4))
    with pytest.raises(SystemExit) as exited:
        main([str(path)])
    assert exited.value.code == 2
    assert capfd.readouterr().err == (
        f"error: {path} contains a pickled reference to '{os.system.__module__}.system', and "
        "unpickling it runs code from the file; pass --trust only if you trust its origin, or "
        "save a state_dict and use --arch\n"
    )


def _figures(program: torch.export.ExportedProgram) -> list[object]:
    report = score_model(program)
    return [report.score, report.params, report.ops, report.input_shape,
            [(r.name, r.params, r.effective_ops, r.weight_bits, r.act_bits) for r in report.layers]]


SAMPLES = sorted((Path(__file__).parents[1] / "sample_models").glob("*.pt2"))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_models_score_as_before(path: Path) -> None:
    assert _figures(load(path)) == _figures(torch.export.load(path))


def test_there_are_sample_models() -> None:
    assert [p.name for p in SAMPLES] == ["densenet121_gr4_cifar.pt2"]


def test_a_pt2e_program_scores_as_before_and_loads_in_a_fresh_process(tmp_path: Path) -> None:
    from micronet_score.compress.quantize import quantize_pt2e, save_pt2e

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    path = tmp_path / "int8.pt2"
    save_pt2e(quantize_pt2e(model, [torch.randn(2, 3, 8, 8)]), path)
    before = _figures(torch.export.load(path))
    assert _figures(load(path)) == before
    # In a fresh process the quantized_decomposed operators exist only if the loader registers
    # them (importing torchao, as quantize_pt2e did here, registers them too).
    done = subprocess.run(
        [sys.executable, "-m", "micronet_score", str(path), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["score"] == before[0]


def _retyped_weight(corpus: Corpus, sizes: list[int], strides: list[int], data: bytes
                    ) -> Callable[[Files], None]:
    """The linear layer's weight (fc.weight, 2x4 float32) described with other sizes/strides."""
    def change(files: Files) -> None:
        config_name = "data/weights/model_weights_config.json"
        config = json.loads(files[config_name])
        meta = config["config"]["fc.weight"]
        meta["tensor_meta"]["sizes"] = [{"as_int": n} for n in sizes]
        meta["tensor_meta"]["strides"] = [{"as_int": s} for s in strides]
        files[config_name] = json.dumps(config).encode()
        files[f"data/weights/{meta['path_name']}"] = data
    return change


def test_an_expanded_weight_is_refused_before_any_work(
    corpus: Corpus, capfd: pytest.CaptureFixture[str]
) -> None:
    # 8 stored values described as 2**40 rows by a stride of 0: counting its zeros would walk
    # 8.8e12 elements (about 15 minutes) from a file of a few kB.
    path = corpus.write("expanded", _retyped_weight(corpus, [2**40, 4], [0, 1], bytes(16)))
    message = refused(path, capfd)
    assert "describes 4,398,046,511,104 elements over 4 stored values" in message


def test_a_weight_of_another_shape_than_the_graph_reads_is_refused(
    corpus: Corpus, capfd: pytest.CaptureFixture[str]
) -> None:
    path = corpus.write("reshaped", _retyped_weight(corpus, [5, 4], [4, 1], bytes(80)))
    message = refused(path, capfd)
    assert ("'fc.weight' is stored as torch.float32 [5, 4] but the graph reads "
            "torch.float32 [2, 4]") in message


def test_class_names_recorded_in_a_program_never_import_a_module() -> None:
    """An exported program's `nn_module_stack` names classes; a tampered one could name any
    torch module and make the scorer import it (torch._inductor pulls in about 970 modules)."""
    from micronet_score.facts import _torch_class

    name = "torch.utils.bottleneck"
    if name in sys.modules:
        pytest.skip(f"{name} is already imported in this process")
    assert _torch_class(f"{name}.Anything") is None
    assert name not in sys.modules
    assert _torch_class("torch.nn.modules.conv.Conv2d") is nn.Conv2d


def test_a_power_in_a_symbolic_size_has_a_small_literal_exponent() -> None:
    from micronet_score.pt2_json import Refused, _sym_expr

    square = "Pow(Symbol('s1', positive=True, integer=True), Integer(2))"
    assert _sym_expr(square, "stride") == square
    for text in ("Pow(Integer(10), Integer(1000000000))",  # sympy would build a huge number
                 "Pow(Symbol('s1'), Symbol('s2'))"):
        with pytest.raises(Refused):
            _sym_expr(text, "stride")
