"""Measure one zoo model: our count next to fvcore's and next to the model's own parameter count.

Run by `zoo_sweep.py` in a fresh process per model (`python tests/bench/zoo_measure.py SOURCE
NAME OUT.json [--max-params N]`), so that a crash, a hang or a memory blow-up stops only that
model. Writes one JSON object to OUT.json; see `measure` for its keys.

What is compared (all at batch 1, one thread):
  * multiplications of the dot-product rows of our report (`DOT_KINDS`: conv, linear, matmul,
    attention...) against fvcore's `FlopCountAnalysis.by_operator()` restricted to its
    multiply-accumulate operators (`FVCORE_DOT_OPS`); fvcore counts one per multiply-add, which
    for these operators is one per multiplication. fvcore has no handler for
    `aten::scaled_dot_product_attention`; we register one that counts the two matrix products
    (q kᵀ: L·S·E, then weights · v: L·S·Ev per head), so attention is compared too (our attention
    rows also count one scaling and the softmax's multiplications per score). Nor has it one for
    `aten::_convolution_mode` (a conv with `padding="same"`): we register its own conv formula.
  * the parameters our layers store against `sum(p.numel() for p in model.parameters())`, and
    the same after BatchNorm folding (`own_after_folds`, derived here from the report's
    "folded into X" notes: a folded BatchNorm's weight and bias go, and X gains a bias of the
    BatchNorm's size when it had none).
Every exact zero in a parameter is replaced by a small value first: our counter skips zero weights
(MicroNet rule) while fvcore counts every weight, and default inits contain zeros (zero-initialised
biases, BatchNorm scales with `zero_init_last`) that would fold into zero conv weights.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_models import build, input_shape

# Our op kinds (Layer.op) that are dot products, and fvcore's operator names that count them.
DOT_KINDS = frozenset({
    "conv", "conv_transpose", "linear", "matmul", "scaled_dot_product_attention",
    "multihead_attention", "lstm", "gru", "rnn", "einsum", "bmm", "baddbmm", "addmm",
    "shifted_window_attention",
})
FVCORE_DOT_OPS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum", "sdpa"})
# Which of our kinds each fvcore operator corresponds to (for the per-kind breakdown).
KIND_GROUP = {
    "conv": "conv", "conv_transpose": "conv", "linear": "linear", "addmm": "linear",
    "matmul": "matmul", "mm": "matmul", "bmm": "matmul", "einsum": "matmul", "baddbmm": "matmul",
    "sdpa": "attention", "scaled_dot_product_attention": "attention",
    "multihead_attention": "attention", "shifted_window_attention": "attention",
    "lstm": "rnn", "gru": "rnn", "rnn": "rnn",
}
IMPORT_FAILED = 3  # exit code: micronet_score does not import (see zoo_sweep.py)
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text[:300]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and anything the libraries print."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def densify(model: nn.Module) -> int:
    """Replace exact zeros in parameters by 1e-3 (see the module docstring); returns how many."""
    changed = 0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                zeros = parameter == 0
                changed += int(zeros.sum())
                parameter.masked_fill_(zeros, 1e-3)
    return changed


def _sdpa_handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore handle for aten::scaled_dot_product_attention(q, k, v, ...): q [..., L, E],
    k [..., S, E], v [..., S, Ev]; multiply-adds of q kᵀ and of the weights times v."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(value) for value in inputs[:3])
    assert q is not None and k is not None and v is not None
    batch = math.prod(q[:-2])
    queries, depth, keys, value_depth = q[-2], q[-1], k[-2], v[-1]
    scores = batch * queries * keys
    # Not a multiply-add, kept apart (not in FVCORE_DOT_OPS): the multiplications the MicroNet
    # rules add around the two products, the scaling of q (one per element of q) and the softmax
    # (exp and division: two per score).
    extra = batch * queries * depth + 2 * scores
    return Counter({"sdpa": scores * (depth + value_depth), "sdpa_extra": extra})


def _conv_mode_handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore handle for aten::_convolution_mode (a conv whose padding is a string, "same" or
    "valid"), which fvcore leaves uncounted: its own conv formula, weight numel times output
    positions."""
    from fvcore.nn.jit_handles import conv_flop_count, get_shape

    x, w, out = get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0])
    assert x is not None and w is not None and out is not None
    return Counter({"conv": int(conv_flop_count(x, w, out))})


def run_fvcore(model: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """fvcore's per-operator counts and per-module dot-product counts, or its error."""
    from fvcore.nn import FlopCountAnalysis

    start = time.perf_counter()
    try:
        with quiet():
            analysis = FlopCountAnalysis(model, (torch.randn(1, *shape),))
            analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_handle,
                                   "aten::_convolution_mode", _conv_mode_handle)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            by_operator = {op: int(n) for op, n in analysis.by_operator().items()}
            by_module = {
                module: sum(int(n) for op, n in ops.items() if op in FVCORE_DOT_OPS)
                for module, ops in analysis.by_module_and_operator().items()
            }
            skipped = dict(analysis.unsupported_ops())
            uncalled = sorted(analysis.uncalled_modules())
    except Exception as error:
        return {"fv_error": first_line(error), "fv_seconds": time.perf_counter() - start}
    return {
        "fv_by_operator": by_operator,
        "fv_dot": sum(n for op, n in by_operator.items() if op in FVCORE_DOT_OPS),
        "fv_attention_extra": by_operator.get("sdpa_extra", 0),
        "fv_unsupported": skipped,
        "fv_seconds": time.perf_counter() - start,
        "_fv_by_module": by_module,
        "_fv_uncalled": uncalled,
    }


def fx_failure(model: nn.Module) -> str:
    """Why the analyzer's symbolic trace fails on `model` (it then fell back to torch.export):
    the analyzer's own tracer run again on a shadow, as `micronet_score.graph` does."""
    tracer: Any = None
    try:
        from micronet_score import graph, shadow

        tracer = graph._LeafTracer()
        with quiet():
            tracer.trace(shadow.shadow(model))
    except Exception as error:
        stack = list(getattr(tracer, "module_stack", {}).values())
        path = str(stack[-1][0]) if stack and stack[-1][0] else ""
        where = ""
        if path:
            with contextlib.suppress(AttributeError):
                where = f" in {path} ({type(model.get_submodule(path)).__name__})"
        return first_line(error)[:200] + where
    return "symbolic trace succeeds when run alone"


def _own_params(model: nn.Module, report: Any) -> dict[str, Any]:
    """The model's own parameter count, and that count after the report's BatchNorm folds."""
    own = sum(p.numel() for p in model.parameters())
    modules = dict(model.named_modules())
    after = own
    folds = 0
    for layer in report.layers:
        if layer.op != "batch_norm" or not layer.note.startswith("folded into "):
            continue
        bn = modules.get(layer.module)
        target = modules.get(layer.note.removeprefix("folded into ").strip())
        if bn is None or target is None:
            continue
        folds += 1
        after -= sum(p.numel() for p in bn.parameters(recurse=False))
        if getattr(target, "bias", None) is None:
            after += int(getattr(bn, "num_features", 0))
    buffers = {
        name.replace(".", "_"): (b.numel(), b.is_floating_point())
        for name, b in model.named_buffers()
        if name.rsplit(".", 1)[-1] not in _BN_STATS
    }
    from_buffers = []
    for layer in report.layers:
        if layer.op in ("parameter", "buffer"):
            key = layer.node.removeprefix("b_").removeprefix("c_")
            if layer.op == "buffer" or key in buffers:
                from_buffers.append(f"{key} ({layer.params}, bits {layer.weight_bits})")
    return {
        "own_params": own,
        "own_after_folds": after,
        "folds": folds,
        "other_buffers": sum(n for n, _ in buffers.values()),
        "params_from_buffers": from_buffers[:5],
        "params_from_buffers_count": len(from_buffers),
    }


def _unused_params(model: nn.Module, uncalled: list[str]) -> dict[str, Any]:
    """Parameters of the modules the forward never calls (fvcore's `uncalled_modules`, e.g.
    GoogLeNet's auxiliary heads in eval), outermost module names first. A module that is not
    called may still have its weights read by its parent (`F.linear(x, self.qkv.weight)`), so
    this is a candidate explanation of a parameter difference, not a rule."""
    top = [m for m in uncalled if not any(m.startswith(f"{o}.") for o in uncalled if o != m)]
    seen: set[int] = set()
    total = 0
    for name in top:
        for parameter in model.get_submodule(name).parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
    return {"uncalled_params": total, "uncalled_modules": top[:6],
            "uncalled_count": len(top)}


def _up(path: str) -> list[str]:
    """The module path and all its ancestors, the root ("") included."""
    parts = path.split(".") if path else []
    return ["", *(".".join(parts[:i]) for i in range(1, len(parts) + 1))]


def _by_class(model: nn.Module, ours: dict[str, float], theirs: dict[str, float],
              top: int = 5) -> list[list[Any]]:
    """Where two per-module totals (each including the module's descendants) differ, by module
    class: diff(m) = ours(m) - theirs(m), and the part a module makes itself is diff(m) less its
    children's diffs. Returns [class, summed own diff, instances] for the `top` classes with the
    largest absolute own difference."""
    names = dict(model.named_modules())
    diff = {m: ours.get(m, 0.0) - theirs.get(m, 0.0) for m in names}
    by_class: dict[str, list[Any]] = {}
    for m, module in names.items():
        children = [f"{m}.{c}" if m else c for c, _ in module.named_children()]
        own = diff[m] - sum(diff.get(c, 0.0) for c in children)
        if abs(own) > 0.5:
            entry = by_class.setdefault(type(module).__name__, [type(module).__name__, 0.0, 0])
            entry[1] += own
            entry[2] += 1
    ranked = sorted(by_class.values(), key=lambda e: -abs(e[1]))
    return [[c, int(d), n] for c, d, n in ranked[:top]]


def _ours_by_module(report: Any, field: str, kinds: frozenset[str] | None) -> dict[str, float]:
    """Our per-layer `field` (mults or params) summed into each module and its ancestors."""
    totals: dict[str, float] = defaultdict(float)
    for layer in report.layers:
        if kinds is None or layer.op in kinds:
            for path in _up(layer.module or ""):
                totals[path] += getattr(layer, field)
    return totals


def _param_diffs(model: nn.Module, report: Any) -> list[list[Any]]:
    """Where our parameter count departs from the model's own after the report's BatchNorm
    folds, by module class (see `_by_class`)."""
    modules = dict(model.named_modules())
    direct = {m: float(sum(p.numel() for p in module.parameters(recurse=False)))
              for m, module in modules.items()}
    for layer in report.layers:
        if layer.op == "batch_norm" and layer.note.startswith("folded into "):
            target = layer.note.removeprefix("folded into ").strip()
            if layer.module in modules and target in modules:
                direct[layer.module] = 0.0
                if getattr(modules[target], "bias", None) is None:
                    direct[target] += float(getattr(modules[layer.module], "num_features", 0))
    theirs: dict[str, float] = defaultdict(float)
    for m, count in direct.items():
        for path in _up(m):
            theirs[path] += count
    return _by_class(model, _ours_by_module(report, "params", None), theirs, top=3)


def analyzer_broken() -> str | None:
    """Why micronet_score cannot score even conv-bn-relu-linear on 3x8x8, or None when it can.
    A failure here means the package itself is broken (e.g. half edited), not the zoo model."""
    try:
        from micronet_score.api import score_model

        tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(144, 2)).eval()
        with quiet():
            score_model(tiny, input_shape=(3, 8, 8))
    except Exception as error:
        return first_line(error)
    return None


def measure(source: str, name: str, max_params: int) -> dict[str, Any]:
    """Build, score and compare one model. Keys: status ("ok", "skipped", "error"), stage and
    error on failure, input_shape, trace_method, uncounted {target: [count, first module]},
    ours_by_kind {op: mults}, ours_dot, params_counted, own_params, own_after_folds, fv_*,
    diff_by_class, seconds (ours), fv_seconds."""
    torch.set_num_threads(1)
    result: dict[str, Any] = {"source": source, "name": name, "status": "error"}
    stage = "build"
    try:
        with quiet(), torch.device("meta"):
            meta = build(source, name)
        size = sum(p.numel() for p in meta.parameters())
        if size > max_params:
            return {**result, "status": "skipped", "reason": f"{size / 1e6:.0f}M parameters"}
        del meta
    except Exception:
        pass  # some models cannot be built on the meta device; build them for real
    try:
        with quiet():
            model = build(source, name).eval()
        if sum(p.numel() for p in model.parameters()) > max_params:
            return {**result, "status": "skipped", "reason": "too many parameters"}
        shape = input_shape(source, name, model)
        result["input_shape"] = list(shape)
        result["zeros_replaced"] = densify(model)
        stage = "score"
        from micronet_score.api import score_model

        start = time.perf_counter()
        with quiet():
            report = score_model(model, input_shape=shape, freebie=False)
        result["seconds"] = time.perf_counter() - start
    except Exception as error:
        return {**result, "stage": stage, "error": first_line(error)}
    result["status"] = "ok"
    result["trace_method"] = report.trace_method
    if report.trace_method != "symbolic_trace":
        result["fx_error"] = fx_failure(model)
    uncounted: dict[str, list[Any]] = {}
    for node in report.uncounted:
        entry = uncounted.setdefault(str(node.target), [0, node.module])
        entry[0] += 1
    result["uncounted"] = uncounted
    by_kind: dict[str, float] = defaultdict(float)
    for layer in report.layers:
        by_kind[layer.op] += layer.mults
    result["ours_by_kind"] = {k: int(v) for k, v in by_kind.items() if v}
    result["ours_dot"] = int(sum(v for k, v in by_kind.items() if k in DOT_KINDS))
    result["ours_mults"] = int(report.mults)
    result["params_counted"] = sum(layer.params for layer in report.layers)
    result.update(_own_params(model, report))
    fv = run_fvcore(model, shape)
    fv_by_module = fv.pop("_fv_by_module", None)
    uncalled = fv.pop("_fv_uncalled", [])
    result.update(_unused_params(model, uncalled))
    result.update(fv)
    if fv_by_module is not None and result["ours_dot"] != result["fv_dot"]:
        ours = _ours_by_module(report, "mults", DOT_KINDS)
        theirs = {m: float(n) for m, n in fv_by_module.items()}
        result["diff_by_class"] = _by_class(model, ours, theirs)
    if result["params_counted"] != result["own_after_folds"]:
        result["param_diff_by_class"] = _param_diffs(model, report)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=("torchvision", "timm"))
    parser.add_argument("name")
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-params", type=int, default=200_000_000)
    args = parser.parse_args()
    broken = analyzer_broken()
    if broken is not None:  # the package is being edited: the sweep retries later
        print(f"micronet_score is broken: {broken}", file=sys.stderr)
        sys.exit(IMPORT_FAILED)
    started = time.perf_counter()
    result = measure(args.source, args.name, args.max_params)
    result["wall_seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
