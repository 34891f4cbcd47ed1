"""Model-zoo sweep: score every torchvision classification model and ~200 timm models with random
weights, and hold each count against the model's own parameter count and fvcore's.

Run from the repository root (not part of the test suite):

    python tests/bench/zoo_sweep.py [--only torchvision|timm] [--models PATTERN] [--jobs N]
        [--out tests/bench/ZOO.md] [--cache PATH] [--fresh] [--stale] [--retry-errors] [--limit N]
        [--report-only]

Each model runs in its own process (`zoo_measure.py`) with a timeout, one torch thread, and models
of more than `--max-params` parameters skipped, so a crash or a hang costs one row. Results are
appended to a JSON-lines cache (default /tmp/micronet_zoo_cache.jsonl): a rerun resumes where the
last stopped; `--fresh` ignores the cache, `--stale` reruns rows measured on other analyzer code
than the current one (the code is fingerprinted by hashing micronet_score/**/*.py). A worker
that finds micronet_score broken (it cannot score a tiny conv net: the package is being edited)
is retried every minute for up to an hour, not cached. The markdown table is written from the
cache at the end (`--report-only`: only that).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_models import SOURCES, models
from zoo_report import render

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "zoo_measure.py"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "micronet_zoo_cache.jsonl"
IMPORT_FAILED = 3  # the worker's exit code when micronet_score is broken (see analyzer_broken)
IMPORT_RETRIES = 60
IMPORT_WAIT_S = 60

# Known reasons for a difference from fvcore, by fnmatch pattern on the model name (first match
# wins); shown for the models outside 0.1%.
EXPLANATIONS: dict[str, str] = {
    "swin_[tsb]": "ShiftedWindowAttention row: fvcore's linears and matmuls plus q scaling (one "
                  "per element of q), softmax (two per score) and, in each shifted block, two per "
                  "window x N^2 (the attention mask); swin_t: 1,430,016 + 4,379,424 + 441,784 = "
                  "+6,251,224",
    "swin_v2_*": "ShiftedWindowAttentionV2 row: fvcore's linears and matmuls plus softmax (two "
                 "per score), the logit scale (one per score), F.normalize of q and k (two per "
                 "element, two per row), the shifted blocks' mask (two per window x N^2) and two "
                 "per head for the logit scale's clamp and exp; swin_v2_t: 7,471,104 + 3,735,552 "
                 "+ 7,471,104 + 233,472 + 753,664 + 276 = +19,665,172",
    "sequencer2d_*": "fvcore has no handler for aten::lstm: its count leaves the LSTMs out (ours "
                     "counts their projections and gates)",
    "lowformer_*": "ConvTranspose2d: we count only the products that land in an output; fvcore "
                   "counts every input position times the whole kernel",
    "efficientvit_b*": "LiteMLA runs its attention with autocast disabled: torch.export wraps "
                       "it in `wrap_with_autocast`, which the analyzer inlines before counting "
                       "(earlier versions left its two matmuls uncounted)",
    **dict.fromkeys(
        ("vit_*", "deit*", "pit_*", "crossvit_*", "nest_*", "eva*", "pvt*", "volo_*", "maxvit*",
         "twins_*", "csatv2*", "mobilevit*", "levit*", "cait_*", "xcit_*", "coat*", "beit*",
         "convit_*", "tiny_vit*", "efficientformer*", "gcvit*", "davit*", "swin*", "mvit*",
         "hiera*", "fastvit*", "poolformer*", "convformer*", "caformer*", "edgenext*", "sebotnet*",
         "halonet*", "visformer*", "focalnet*", "inception_next*", "efficientvit_m*", "flexivit*",
         "vitamin*", "samvit*", "lowformer*", "tnt_*", "sequencer*"),
        "attention rows: besides the two matrix products fvcore counts, one product per query "
        "element (the scale) and the softmax's two per score (the rule file's cost)"),
}


def fingerprint() -> str:
    """A short hash of the analyzer's source (micronet_score/**/*.py, the toolkit excluded)."""
    digest = hashlib.sha1()
    for path in sorted((REPO / "micronet_score").rglob("*.py")):
        if "compress" in path.relative_to(REPO).parts:
            continue
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def revision() -> str:
    """`git describe`-like: the short HEAD, with "+changes" when the analyzer is edited."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "micronet_score") else "")


def load_cache(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The last row per (source, name) in the JSON-lines cache."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["source"], row["name"])] = row
    return rows


def run_one(source: str, name: str, timeout: float, max_params: int) -> dict[str, Any]:
    """Measure one model in a fresh process; failures become rows too (status error/timeout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "row.json"
        command = [sys.executable, str(WORKER), source, name, str(out),
                   "--max-params", str(max_params)]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"source": source, "name": name, "status": "timeout",
                    "error": f"no result within {timeout:.0f} s", "wall_seconds": timeout}
        if out.exists():
            row: dict[str, Any] = json.loads(out.read_text())
            return row
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        status = "import" if done.returncode == IMPORT_FAILED else "crash"
        return {"source": source, "name": name, "status": status,
                "error": f"exit code {done.returncode}: {lines[-1] if lines else ''}"[:300],
                "wall_seconds": time.perf_counter() - start}


def sweep(todo: list[tuple[str, str]], args: argparse.Namespace, code: str) -> None:
    """Run `todo` with `args.jobs` workers, appending each finished row to the cache."""
    def task(item: tuple[str, str]) -> dict[str, Any]:
        for _ in range(IMPORT_RETRIES):
            row = run_one(*item, args.timeout, args.max_params)
            if row["status"] != "import":
                return row
            print(f"  {item[1]}: micronet_score is broken ({row['error']}); retrying in "
                  f"{IMPORT_WAIT_S} s", flush=True)
            time.sleep(IMPORT_WAIT_S)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool, args.cache.open("a") as cache:
        for index, row in enumerate(pool.map(task, todo), 1):
            row["code"] = code
            row["measured"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")
            if row["status"] != "import":
                cache.write(json.dumps(row) + "\n")
                cache.flush()
            print(f"[{index}/{len(todo)}] {row['source']} {row['name']}: {brief(row)}",
                  flush=True)


def brief(row: dict[str, Any]) -> str:
    """One progress line for a row."""
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('error') or row.get('reason', '')}"
    ratio = (f"{row['ours_dot'] / row['fv_dot']:.4f}" if row.get("fv_dot")
             else row.get("fv_error", "no fvcore count"))
    return (f"{row['trace_method']}, uncounted {sum(n for n, _ in row['uncounted'].values())}, "
            f"ours/fvcore {ratio}, {row['wall_seconds']:.1f} s")


def selected(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (source, name) pairs the options choose, in sweep order."""
    chosen: list[tuple[str, str]] = []
    for source in SOURCES if args.only is None else (args.only,):
        patterns = args.models.split(",")
        names = [n for n in models(source) if any(fnmatch.fnmatch(n, p) for p in patterns)]
        chosen += [(source, n) for n in names[: args.limit]]
    return chosen


def environment() -> dict[str, str]:
    """Versions and machine, for the table's header."""
    import fvcore
    import timm
    import torch
    import torchvision

    versions = (f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                f"timm {timm.__version__}, fvcore {getattr(fvcore, '__version__', '?')}")
    return {"versions": versions,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                       f"{platform.python_version()}"}


def parse(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=SOURCES)
    parser.add_argument("--models", default="*",
                        help="fnmatch patterns on model names, separated by commas")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("tests/bench/ZOO.md"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--fresh", action="store_true", help="ignore cached rows")
    parser.add_argument("--stale", action="store_true",
                        help="rerun rows measured on other analyzer code")
    parser.add_argument("--retry-errors", action="store_true",
                        help="rerun rows that failed (error, crash, timeout)")
    parser.add_argument("--limit", type=int, default=None, help="at most N models per source")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--max-params", type=int, default=200_000_000)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def main() -> None:
    args = parse()
    code = fingerprint()
    chosen = selected(args)
    cached = {} if args.fresh else load_cache(args.cache)
    if not args.report_only:
        todo = [item for item in chosen if item not in cached
                or (args.stale and cached[item].get("code") != code)
                or (args.retry_errors and cached[item]["status"] in ("error", "crash", "timeout"))]
        print(f"{len(chosen)} models chosen, {len(todo)} to run (cache: {args.cache})",
              flush=True)
        started = time.perf_counter()
        sweep(todo, args, code)
        print(f"sweep took {time.perf_counter() - started:.0f} s", flush=True)
    rows = load_cache(args.cache)
    shown = [arg for arg in sys.argv[1:] if arg != "--report-only"]
    command = "python tests/bench/zoo_sweep.py " + " ".join(shown)
    meta = {**environment(), "command": command.strip(), "revision": revision(), "code": code,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    text = render([rows[item] for item in chosen if item in rows], len(chosen), meta,
                  EXPLANATIONS)
    if str(args.out) != "-":
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
