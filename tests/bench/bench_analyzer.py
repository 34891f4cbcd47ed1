"""Benchmark: how fast is `score_model` next to fvcore, ptflops, thop, torchinfo and a forward pass?

Run from the repository root (needs the `bench` extra: ptflops, thop, torchinfo):

    python tests/bench/bench_analyzer.py [--repeats N] [--models a,b] [--output FILE.md]

(the output defaults to tests/bench/RESULTS.md; `--output -` writes none).

Everything runs in one process on one thread (`torch.set_num_threads(1)`), except the memory and
meta-device goals, which need a fresh process each and run in subprocesses of this same script.
For every model and every tool: one untimed warm-up call, then `--repeats` timed calls on a fresh
deep copy of the model each (copying is not timed), and the median is reported. Only the tool call
itself is timed; our own includes tracing. A tool that raises (or, for ptflops, returns None) on a
model is recorded as "failed: <reason>" and the run goes on.

Also measured (the analyzer's goals):
  * memory: peak RSS while scoring resnet50 / RSS after just loading it (fresh process), goal <= 1.3
  * scaling: time(N=2000) / time(N=250) for a chain of N Conv(8,8,3)+BN+ReLU blocks at 8x8
  * meta: score torchvision vit_l_16 built on the meta device (fresh process), goal < 20 s, < 2 GB
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import io
import json
import logging
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = Path("tests/bench/RESULTS.md")
TOOLS = ("forward", "ours", "fvcore", "ptflops", "thop", "torchinfo")
PEERS = ("fvcore", "ptflops", "thop", "torchinfo")
CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)


# --------------------------------------------------------------------------------------------
# Models


def _cifar(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from micronet_score.compress.models import create_model

        return create_model(name)

    return build


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model: nn.Module = getattr(torchvision.models, name)()
        return model

    return build


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "densenet121_gr4": (_cifar("densenet121_gr4"), CIFAR),
    "densenet121_gr32": (_cifar("densenet121_gr32"), CIFAR),
    "wrn28_10": (_cifar("wrn28_10"), CIFAR),
    "resnet18": (_torchvision("resnet18"), IMAGENET),
    "resnet50": (_torchvision("resnet50"), IMAGENET),
    "mobilenet_v2": (_torchvision("mobilenet_v2"), IMAGENET),
    "densenet121": (_torchvision("densenet121"), IMAGENET),
    "vit_b_16": (_torchvision("vit_b_16"), IMAGENET),
}


def dense(model: nn.Module) -> nn.Module:
    """Give every parameter a non-zero value and put the model in eval mode.

    Our counter is sparsity-aware: a weight that is exactly zero is not counted (its
    multiplication is skipped under the MicroNet rules), while fvcore, ptflops, thop and torchinfo
    count every weight. Default init can produce exact zeros (and some layers, e.g. ViT's class
    token or zero-initialised biases/heads, are all zeros), which would make our dense count
    differ from the peers for a reason that has nothing to do with the analyzer. Uniform values in
    [0.1, 1.0) make the model fully dense so the counts are comparable. (Timings do not depend on
    the values.)
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(0.1, 1.0, generator=generator)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Tools. Each takes a fresh model and the input shape (without batch), returns a count or None.


def run_forward(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor) -> float | None:
    with torch.no_grad():
        model(x)
    return None


def run_ours(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor) -> tuple[float, float]:
    """Returns (conv+linear mults, all layers' mults)."""
    from micronet_score import score_model

    report = score_model(model, input_shape=shape, freebie=False)
    conv_linear = sum(layer.mults for layer in report.layers if layer.op in ("conv", "linear"))
    return conv_linear, sum(layer.mults for layer in report.layers)


def run_fvcore(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor) -> float | None:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    analysis.total()  # the timed call; by_operator() below reuses its cached result
    by_operator = analysis.by_operator()
    return float(sum(by_operator.get(name, 0) for name in ("conv", "linear", "addmm")))


def run_ptflops(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor) -> float | None:
    from ptflops import get_model_complexity_info
    from ptflops.flops_counter import FLOPS_BACKEND

    printed = io.StringIO()
    macs, _params = get_model_complexity_info(
        model,
        tuple(shape),
        print_per_layer_stat=False,
        as_strings=False,
        backend=FLOPS_BACKEND.ATEN,
        ost=printed,
        verbose=False,
    )
    if macs is None:  # ptflops swallows the exception and prints it; surface it
        raise RuntimeError(_ptflops_reason(printed.getvalue()))
    return float(macs)


def _ptflops_reason(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("<class"):
            return line
    return lines[-1] if lines else "returned None"


def run_thop(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor) -> float | None:
    from thop import profile

    macs, _params = profile(model, inputs=(x,), verbose=False)
    return float(macs)


def run_torchinfo(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor) -> float | None:
    from torchinfo import summary

    stats = summary(model, input_size=(1, *shape), verbose=0, device="cpu")
    return float(stats.total_mult_adds)


Runner = Callable[[nn.Module, tuple[int, ...], torch.Tensor], "float | tuple[float, float] | None"]
RUNNERS: dict[str, Runner] = {
    "forward": run_forward,
    "ours": run_ours,
    "fvcore": run_fvcore,
    "ptflops": run_ptflops,
    "thop": run_thop,
    "torchinfo": run_torchinfo,
}

COUNT_LABELS = {
    "ours": "ours conv+linear mults",
    "fvcore": "fvcore conv+linear+addmm",
    "ptflops": "ptflops MACs (aten total)",
    "thop": "thop MACs (total)",
    "torchinfo": "torchinfo mult-adds (total)",
}


@contextlib.contextmanager
def quiet() -> Any:
    """Silence the peers' warnings and prints (jit TracerWarnings, fvcore/thop logging)."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield sink
    finally:
        logging.disable(previous)


def short_reason(error: BaseException, limit: int = 90) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


@dataclass
class Measurement:
    times: list[float] = field(default_factory=list)
    count: float | None = None
    total: float | None = None  # ours only: mults of every layer, not just conv+linear
    error: str | None = None

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times) * 1000 if self.times and not self.error else None


def measure(
    runner: Runner,
    model: nn.Module,
    shape: tuple[int, ...],
    warmup: int,
    repeats: int,
) -> Measurement:
    result = Measurement()
    x = torch.zeros(1, *shape)
    for attempt in range(warmup + repeats):
        fresh = copy.deepcopy(model)  # hooks/buffers of one tool never reach another
        gc.collect()
        try:
            with quiet():
                start = time.perf_counter()
                count = runner(fresh, shape, x)
                elapsed = time.perf_counter() - start
        except Exception as error:
            result.error = "failed: " + short_reason(error)
            return result
        finally:
            del fresh
        if isinstance(count, tuple):
            result.count, result.total = count
        else:
            result.count = count
        if attempt >= warmup:
            result.times.append(elapsed)
    return result


# --------------------------------------------------------------------------------------------
# Goals


def _status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_kib() -> int:
    """Peak RSS of this process. VmHWM where /proc has it: `ru_maxrss` survives execve, so a
    subprocess started from this (large) benchmark process would report the parent's peak."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == "darwin" else value  # bytes on macOS, KiB on Linux


def goal_memory() -> dict[str, Any]:
    """In a fresh process: RSS after building resnet50, then peak RSS while scoring it."""
    from micronet_score import score_model

    torch.set_num_threads(1)
    imported = _status_kib("VmRSS")
    model = dense(torchvision.models.resnet50())
    gc.collect()
    loaded = _status_kib("VmRSS") or _peak_kib()
    reset = _reset_peak()
    start = time.perf_counter()
    error = None
    try:
        with quiet():
            score_model(model, input_shape=IMAGENET, freebie=False)
    except Exception as exc:
        error = "failed: " + short_reason(exc)
    elapsed = time.perf_counter() - start
    peak = _peak_kib()
    return {
        "rss_after_import_mib": (imported or 0) / 1024,
        "rss_after_load_mib": loaded / 1024,
        "peak_rss_scoring_mib": peak / 1024,
        "ratio": peak / loaded,
        "peak_method": "VmHWM reset after loading" if reset else "whole-process peak",
        "seconds": elapsed,
        "error": error,
    }


def goal_meta() -> dict[str, Any]:
    """In a fresh process: score vit_l_16 built on the meta device; time and peak RSS."""
    from micronet_score import score_model

    torch.set_num_threads(1)
    imported = _status_kib("VmRSS")
    with torch.device("meta"):
        model = torchvision.models.vit_l_16()
    model.eval()
    built = _status_kib("VmRSS")
    start = time.perf_counter()
    error, params, mults = None, None, None
    try:
        with quiet():
            report = score_model(model, input_shape=IMAGENET, freebie=False)
        params = sum(layer.params for layer in report.layers)
        mults = sum(layer.mults for layer in report.layers)
    except Exception as exc:
        error = "failed: " + short_reason(exc, 200)
    elapsed = time.perf_counter() - start
    return {
        "rss_after_import_mib": (imported or 0) / 1024,
        "rss_after_build_mib": (built or 0) / 1024,
        "peak_rss_mib": _peak_kib() / 1024,  # whole process, imports included
        "seconds": elapsed,
        "params": params,
        "mults": mults,
        "error": error,
    }


def chain(blocks: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    return dense(nn.Sequential(*layers))


def goal_scaling(repeats: int) -> dict[str, Any]:
    """time(N=2000) / time(N=250) for score_model on a chain of N Conv+BN+ReLU blocks at 8x8."""
    shape = (8, 8, 8)
    result: dict[str, Any] = {}
    repeats = max(repeats, 3)
    for blocks in (250, 2000):
        # one warm-up call per size (imports, caches), then the median of the timed calls
        m = measure(run_ours, chain(blocks), shape, 1, repeats)
        result[f"n{blocks}_ms"] = m.median_ms
        result[f"n{blocks}_error"] = m.error
    if result["n250_ms"] and result["n2000_ms"]:
        result["ratio"] = result["n2000_ms"] / result["n250_ms"]
    else:
        result["ratio"] = None
    return result


def in_subprocess(goal: str, timeout: float = 600) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--goal", goal]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"failed: timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed: exit {done.returncode}: {tail[:200]}"}
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


# --------------------------------------------------------------------------------------------
# Output


def fmt_ms(m: Measurement) -> str:
    if m.error:
        return m.error
    value = m.median_ms
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 10_000 else f"{value:,.0f}"


def fmt_ratio(ours: Measurement, other: Measurement) -> str:
    if ours.median_ms is None or other.median_ms is None or other.median_ms == 0:
        return "-"
    return f"{ours.median_ms / other.median_ms:.2f}"


def fmt_count(m: Measurement) -> str:
    if m.error:
        return "failed"
    if m.count is None:
        return "-"
    return f"{m.count:,.0f}"


def tables(results: dict[str, dict[str, Measurement]]) -> tuple[list[str], list[list[str]]]:
    time_head = ["model", *(f"{t} ms" for t in TOOLS), "ours/fwd", *(f"ours/{p}" for p in PEERS)]
    time_rows = []
    for name, by_tool in results.items():
        ours = by_tool["ours"]
        time_rows.append(
            [
                name,
                *(fmt_ms(by_tool[t]) for t in TOOLS),
                fmt_ratio(ours, by_tool["forward"]),
                *(fmt_ratio(ours, by_tool[p]) for p in PEERS),
            ]
        )
    return time_head, time_rows


def count_table(results: dict[str, dict[str, Measurement]]) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        *(COUNT_LABELS[t] for t in ("ours", *PEERS)),
        "ours == fvcore",
        "ours all-layer mults",
    ]
    rows = []
    for name, by_tool in results.items():
        ours, fv = by_tool["ours"], by_tool["fvcore"]
        same = "-"
        if ours.count is not None and fv.count is not None and not (ours.error or fv.error):
            same = "yes" if ours.count == fv.count else f"no ({ours.count / fv.count:.4f}x)"
        total = f"{ours.total:,.0f}" if ours.total is not None and not ours.error else "-"
        rows.append([name, *(fmt_count(by_tool[t]) for t in ("ours", *PEERS)), same, total])
    return head, rows


def plain(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goal_rows(
    memory: dict[str, Any], scaling: dict[str, Any], meta: dict[str, Any]
) -> tuple[list[str], list[list[str]]]:
    head = ["goal", "target", "measured", "details", "met"]
    rows: list[list[str]] = []
    if memory.get("ratio") is not None and not memory.get("error"):
        rows.append(
            [
                "memory: resnet50 peak RSS while scoring / RSS after loading",
                "<= 1.30",
                f"{memory['ratio']:.2f}",
                f"after import {memory['rss_after_import_mib']:.0f} MiB, after load "
                f"{memory['rss_after_load_mib']:.0f} MiB, peak "
                f"{memory['peak_rss_scoring_mib']:.0f} MiB ({memory['peak_method']}), "
                f"scoring {memory['seconds']:.1f} s",
                "yes" if memory["ratio"] <= 1.3 else "no",
            ]
        )
    else:
        rows.append(["memory: resnet50 peak/loaded", "<= 1.30", memory.get("error", "?"), "", "no"])
    if scaling.get("ratio") is not None:
        rows.append(
            [
                "scaling: time(N=2000) / time(N=250), Conv+BN+ReLU chain at 8x8",
                "<= 10 (8 = linear)",
                f"{scaling['ratio']:.2f}",
                f"N=250 {scaling['n250_ms']:,.0f} ms, N=2000 {scaling['n2000_ms']:,.0f} ms",
                "yes" if scaling["ratio"] <= 10 else "no",
            ]
        )
    else:
        reason = scaling.get("n250_error") or scaling.get("n2000_error") or "?"
        rows.append(["scaling: N=2000 / N=250", "<= 10 (8 = linear)", reason, "", "no"])
    if not meta.get("error"):
        ok = meta["seconds"] < 20 and meta["peak_rss_mib"] < 2048
        rows.append(
            [
                "meta: score vit_l_16 built on the meta device (fresh process)",
                "< 20 s, < 2 GB",
                f"{meta['seconds']:.1f} s, {meta['peak_rss_mib']:.0f} MiB",
                "peak RSS of the whole process (after import"
                f" {meta['rss_after_import_mib']:.0f} MiB, after build"
                f" {meta['rss_after_build_mib']:.0f} MiB); counted"
                f" {meta['params']:,} params, {meta['mults']:,.0f} mults",
                "yes" if ok else "no",
            ]
        )
    else:
        detail = (
            f"after {meta['seconds']:.1f} s, peak {meta['peak_rss_mib']:.0f} MiB"
            if "seconds" in meta
            else ""
        )
        rows.append(["meta: vit_l_16 on meta", "< 20 s, < 2 GB", meta["error"], detail, "no"])
    return head, rows


def machine() -> str:
    processor = platform.processor()
    if not processor:
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    processor = line.split(":", 1)[1].strip() + " (from /proc/cpuinfo)"
                    break
    return (
        f"processor: {processor or 'unknown'}; cpu count: {os.cpu_count()}; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}; "
        f"torch threads: {torch.get_num_threads()}"
    )


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "micronet_score", "rules")
    return head + (" + uncommitted changes in micronet_score/ or rules/" if dirty else "")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("micronet-score", "fvcore", "ptflops", "thop", "torchinfo"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


HOW_TO_READ = """\
**How to read.** Times are medians in milliseconds of `{repeats}` calls after {warmup} warm-up
call(s), each on a fresh deep copy of the model (copy not timed), one thread, all in one process.
`forward ms` is one plain forward pass under `torch.no_grad()`, the natural yardstick: every peer
runs at least one forward. `ours ms` is `score_model(model, input_shape=..., freebie=False)`
including tracing and shape propagation. `ours/X` is our time divided by X's (below 1 means we are
faster). The peers are called the way their docs show: fvcore `FlopCountAnalysis(model, x).total()`
(a fresh analysis object each call, warnings off), ptflops `get_model_complexity_info(...,
backend=FLOPS_BACKEND.ATEN, print_per_layer_stat=False, as_strings=False)`, thop `profile(model,
inputs=(x,))`, torchinfo `summary(model, input_size=..., verbose=0)`. On a small shared machine
other processes steal time: compare the load averages above, and treat differences of ~20% between
two runs of this script as noise (the ratios within one row are more stable than absolute times).

The counts table is a sanity check that each tool analysed the same network, not a ranking:
**ours** is the sum of `layer.mults` of the `conv` and `linear` layers (dense fp32, `freebie=False`;
every weight was set non-zero so sparsity does not reduce it); **fvcore** keeps only its `conv`,
`linear` and `addmm` operators (it has no handler for `scaled_dot_product_attention`, so attention
matmuls are missing from its total on ViT); **ptflops** (aten backend: mm, matmul, addmm, bmm,
convolution), **thop** and **torchinfo** are their own reported totals as they are, which include
other ops (thop counts e.g. batch norm and pooling, torchinfo counts mult-adds per module), so they
are not expected to equal ours (torchinfo, for one, misses the linears inside ViT's attention).
"ours == fvcore" should read "yes" for the CNNs. On vit_b_16 it reads "no" by construction: we
keep each `nn.MultiheadAttention` whole as one `multihead_attention` layer, so its in- and
out-projections are not in our conv+linear sum, while fvcore sees them as `linear`; "ours
all-layer mults" (every counted layer, attention included) is the figure to hold against the
peers' totals there. Counts are batch 1.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per tool (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of: {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help=f"comma-separated subset of: {', '.join(TOOLS)}"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write ('-' for none)"
    )
    parser.add_argument(
        "--no-goals", action="store_true", help="skip the memory, scaling and meta-device goals"
    )
    parser.add_argument("--goal", choices=("memory", "meta"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.goal:
        print(json.dumps(goal_memory() if args.goal == "memory" else goal_meta()))
        return 0

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown += [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown model or tool: {', '.join(unknown)}")
    if "ours" not in tools:
        tools.insert(0, "ours")

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    started = time.perf_counter()
    load_start = load_average()
    rev_start = revision()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"$ {command}\n{when}\nrevision: {rev_start}\n{machine()}\n{versions()}\n", flush=True)

    results: dict[str, dict[str, Measurement]] = {}
    for name in names:
        build, shape = MODELS[name]
        torch.manual_seed(0)
        model = dense(build())
        by_tool: dict[str, Measurement] = {}
        for tool in TOOLS:
            if tool not in tools:
                by_tool[tool] = Measurement(error="skipped")
                continue
            t0 = time.perf_counter()
            by_tool[tool] = measure(RUNNERS[tool], model, shape, args.warmup, args.repeats)
            print(
                f"  {name:<17} {tool:<9} {fmt_ms(by_tool[tool]):>12} ms  "
                f"count {fmt_count(by_tool[tool])}  ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        results[name] = by_tool
        del model
        gc.collect()

    sections: list[tuple[str, list[str], list[list[str]]]] = []
    if results:
        sections.append(("Time (median ms)", *tables(results)))
        sections.append(("Counts (batch 1)", *count_table(results)))
    if not args.no_goals:
        print("  goal: scaling", flush=True)
        scaling = goal_scaling(args.repeats)
        print("  goal: memory (subprocess)", flush=True)
        memory = in_subprocess("memory")
        print("  goal: meta (subprocess)", flush=True)
        meta = in_subprocess("meta")
        sections.append(("Goals", *goal_rows(memory, scaling, meta)))

    failures = [
        f"{name} / {tool}: {m.error}"
        for name, by_tool in results.items()
        for tool, m in by_tool.items()
        if m.error and m.error != "skipped"
    ]
    total = time.perf_counter() - started
    load_end = load_average()
    rev_end = revision()
    rev = rev_start if rev_end == rev_start else f"{rev_start} at the start, {rev_end} at the end"

    print()
    for title, head, rows in sections:
        print(f"{title}\n{plain(head, rows)}\n")
    if failures:
        print("Failures:\n" + "\n".join(f"  {f}" for f in failures) + "\n")
    print(f"total runtime: {total:.0f} s (load average {load_start} -> {load_end})")

    if str(args.output) != "-":
        parts = [
            "# Analyzer benchmark",
            "",
            "Generated by `tests/bench/bench_analyzer.py`; rerun it to refresh this file.",
            "",
            f"- command: `{command}` (from the repository root)",
            f"- date: {when}",
            f"- revision: {rev}",
            f"- machine: {machine()}",
            f"- packages: {versions()}",
            f"- total runtime: {total:.0f} s; load average (1 min) {load_start} at the start,"
            f" {load_end} at the end",
            "",
            HOW_TO_READ.format(repeats=args.repeats, warmup=args.warmup),
        ]
        for title, head, rows in sections:
            parts += [f"## {title}", "", markdown(head, rows), ""]
        if not args.no_goals:
            parts += [
                "Goals: memory runs in a fresh process: RSS after importing and building resnet50"
                " (non-zero weights), then the kernel's peak-RSS mark is reset and read again"
                " after `score_model` at 3x224x224. Scaling is in the main process: per size one"
                f" warm-up call, then the median of {max(args.repeats, 3)} calls. Meta runs in a"
                " fresh process: `with"
                ' torch.device("meta"): vit_l_16()`, one cold `score_model` call (lazy imports'
                " included); peak RSS is the whole process's VmHWM, imports included.",
                "",
            ]
        if failures:
            parts += ["## Failures", "", *(f"- {f}" for f in failures), ""]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(parts))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
