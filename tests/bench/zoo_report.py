"""The zoo sweep's markdown table (tests/bench/ZOO.md), drawn from the rows `zoo_measure.py` wrote.

Kept apart from the sweep's process handling; `render` is a pure function of the rows.
"""

from __future__ import annotations

import fnmatch
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]
TIGHT, LOOSE = 0.001, 0.01  # relative agreement with fvcore: within 0.1%, within 1%


def ratio(row: Row) -> float | None:
    """ours / fvcore on the dot-product multiplications; None where fvcore gave no count."""
    if row.get("status") != "ok" or "fv_dot" not in row:
        return None
    ours, theirs = row["ours_dot"], row["fv_dot"]
    if theirs == 0:
        return 1.0 if ours == 0 else float("inf")
    return float(ours / theirs)


def within(row: Row, tolerance: float) -> bool:
    value = ratio(row)
    return value is not None and abs(value - 1) <= tolerance


def attention_extra_only(row: Row) -> bool:
    """Whether ours - fvcore is exactly the multiplications our attention rows add around the
    two matrix products (q scaling and softmax, tallied by zoo_measure's fvcore handler)."""
    extra = row.get("fv_attention_extra") or 0
    return bool(extra) and row["ours_dot"] - row["fv_dot"] == extra


def explanation(row: Row, explanations: Mapping[str, str]) -> str:
    """The first explanation whose fnmatch pattern matches the model name; else, when the
    difference is exactly the attention rows' extra multiplications, that; else ""."""
    name = str(row["name"])
    found = next((text for pattern, text in explanations.items()
                  if fnmatch.fnmatch(name, pattern)), "")
    if found or not attention_extra_only(row):
        return found
    return (f"exactly our attention rows' q scaling and softmax ({row['fv_attention_extra']:,} "
            "mults: one per element of q, two per score), which fvcore leaves out")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _m(value: float) -> str:
    return f"{value / 1e6:,.2f}M"


def _uncounted(row: Row) -> str:
    items = sorted(row.get("uncounted", {}).items(), key=lambda kv: -kv[1][0])
    return ", ".join(f"`{op}` x{n}" for op, (n, _) in items)


def _where(row: Row) -> str:
    """The module classes where our count departs from fvcore's, largest first."""
    theirs = row.get("fv_dot") or 1
    return ", ".join(f"{cls} x{n}: {diff / 1e6:+,.2f}M ({100 * diff / theirs:+.1f}%)"
                     for cls, diff, n in row.get("diff_by_class", [])[:3])


def _params_match(row: Row) -> str:
    """"folds" when the count is the model's own after BatchNorm folds, "uncalled" when it is
    that less the parameters of modules the forward never calls, "" otherwise."""
    counted, after = row["params_counted"], row["own_after_folds"]
    if counted == after:
        return "folds"
    if row.get("uncalled_params") and counted == after - row["uncalled_params"]:
        return "uncalled"
    return ""


def _params(row: Row) -> str:
    counted, after = row["params_counted"], row["own_after_folds"]
    text = f"{counted:,}"
    if _params_match(row) == "uncalled":
        names = ", ".join(row["uncalled_modules"][:3])
        text += f" (= own less {row['uncalled_params']:,} in uncalled {names})"
    elif counted != after:
        text += f" ({counted - after:+,} vs {after:,})"
    return text


def _trace(row: Row) -> str:
    if row["status"] == "ok":
        method = str(row["trace_method"])
        short = {"symbolic_trace": "fx", "torch.export": "export"}.get(method, method)
        return short + (f" (fx: {row['fx_error']})" if "fx_error" in row else "")
    if row["status"] == "skipped":
        return f"skipped ({row.get('reason', '')})"
    return f"**{row['status']}** ({row.get('stage', '')}): {row.get('error', '')}"


def _model_row(row: Row, explanations: Mapping[str, str]) -> str:
    shape = "x".join(str(d) for d in row.get("input_shape", [])[1:]) or "-"
    if row["status"] != "ok":
        cells = [f"`{row['name']}`", shape, _cell(_trace(row)), "", "", "", "", "", "",
                 f"{row.get('wall_seconds', 0):.0f}", ""]
        return "| " + " | ".join(cells) + " |"
    value = ratio(row)
    fv = _m(row["fv_dot"]) if "fv_dot" in row else f"failed: {row.get('fv_error', '')}"
    cells = [
        f"`{row['name']}`", shape, _trace(row), _uncounted(row), _params(row),
        _m(row["ours_dot"]), fv, "" if value is None else f"{value:.4f}", _where(row),
        f"{row['seconds']:.1f} / {row.get('fv_seconds', 0):.1f}",
        explanation(row, explanations) if value is not None and not within(row, TIGHT)
        else "",
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


HEADER = ("| model | input | traced | uncounted nodes | params counted (vs own after folds) "
          "| mults ours | mults fvcore | ours/fvcore | where it differs | s ours / fvcore "
          "| explanation |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _summary(rows: Sequence[Row], chosen: int, explanations: Mapping[str, str]) -> list[str]:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] not in ("ok", "skipped")]
    skipped = [r for r in rows if r["status"] == "skipped"]
    methods = Counter(r["trace_method"] for r in ok)
    by_source = Counter(r["source"] for r in rows)
    out = [
        f"- **models**: {chosen} chosen, {len(rows)} measured "
        f"({', '.join(f'{s} {n}' for s, n in sorted(by_source.items()))}); "
        f"{len(skipped)} skipped as too large"
        + (f" ({', '.join(r['name'] for r in skipped)})" if skipped else "")
        + (f"; {chosen - len(rows)} not run yet" if chosen > len(rows) else ""),
        f"- **traced**: {len(ok)} ("
        + ", ".join(f"{m}: {n}" for m, n in methods.most_common())
        + f"); failed: {len(failed)}",
    ]
    for r in failed:
        out.append(f"  - `{r['name']}` ({r['status']}, {r.get('stage', '')}): "
                   f"{_cell(r.get('error', ''))}")
    with_uncounted = [r for r in ok if r["uncounted"]]
    ops: dict[str, list[str]] = defaultdict(list)
    nodes: Counter[str] = Counter()
    for r in with_uncounted:
        for op, (n, _) in r["uncounted"].items():
            ops[op].append(r["name"])
            nodes[op] += n
    out.append(f"- **uncounted nodes**: in {len(with_uncounted)} of {len(ok)} models; "
               "by op (models, nodes, e.g.):")
    for op in sorted(ops, key=lambda o: (-len(ops[o]), o)):
        names = ops[op]
        out.append(f"  - `{op}`: {len(names)} models, {nodes[op]} nodes "
                   f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
    match = Counter(_params_match(r) for r in ok)
    out.append(f"- **parameters**: counted = the model's own after BatchNorm folds in "
               f"{match['folds']} of {len(ok)}, and once the modules the forward never calls "
               f"are left out in {match['uncalled']} more; the others:")
    for r in ok:
        if not _params_match(r):
            note = (f"; {r['params_from_buffers_count']} buffers counted as parameters, e.g. "
                    f"{r['params_from_buffers'][0]}" if r["params_from_buffers"] else "")
            where = ", ".join(f"{cls} x{n}: {diff:+,}"
                              for cls, diff, n in r.get("param_diff_by_class", []))
            out.append(f"  - `{r['name']}`: {_params(r)}"
                       + (f"; where: {where}" if where else "") + note)
    compared = [r for r in ok if ratio(r) is not None]
    fv_failed = [r for r in ok if "fv_error" in r]
    out.append(f"- **multiplications vs fvcore** (conv + linear + matmul + attention): fvcore "
               f"counted {len(compared)} models; ours within 0.1% on "
               f"{sum(within(r, TIGHT) for r in compared)}, within 1% on "
               f"{sum(within(r, LOOSE) for r in compared)}; fvcore failed on {len(fv_failed)}"
               + (f" ({', '.join(r['name'] for r in fv_failed)})" if fv_failed else ""))
    off = [r for r in compared if not within(r, TIGHT)]
    out.append(f"  - of the {len(off)} outside 0.1%, {sum(attention_extra_only(r) for r in off)} "
               "differ by exactly our attention rows' q scaling and softmax, and "
               f"{sum(bool(explanation(r, explanations)) for r in off)} have an explanation")
    out += ["", "### Disagreements with fvcore (more than 0.1%)", "",
            "| model | ours/fvcore | mults ours | mults fvcore | where it differs | explanation |",
            "|---|---|---|---|---|---|"]
    off = sorted((r for r in compared if not within(r, TIGHT)),
                 key=lambda r: -abs((ratio(r) or 1.0) - 1))
    for r in off:
        cells = [f"`{r['name']}`", f"{ratio(r):.4f}", _m(r["ours_dot"]), _m(r["fv_dot"]),
                 _where(r), explanation(r, explanations)]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


HOW_TO_READ = """\
**How to read.** Each model is built with random weights (`torchvision.models.get_model(name,
weights=None)`, `timm.create_model(name, pretrained=False)`), put in eval mode, exact zeros in its
parameters replaced by 1e-3 (our counter skips zero weights, fvcore does not), and scored with
`score_model(model, input_shape=..., freebie=False)` at batch 1 and the model's input size
(timm's `pretrained_cfg`; torchvision's default-weights crop). *traced*: fx = symbolic trace,
export = `torch.export` fallback (with the reason the symbolic trace failed). *uncounted nodes*:
target x count of the nodes no rule covers. *params counted*: the sum of our layers' parameters;
in brackets the difference from the model's own `sum(p.numel())` after the BatchNorm folds the
report names (a folded BatchNorm's weight and bias go, its target gains a bias if it had none).
*mults*: multiplications of our conv, linear, matmul and attention rows against fvcore's
`by_operator()` conv, linear, addmm, matmul, mm, bmm and einsum (one per multiply-add), plus two
handlers we register: `aten::scaled_dot_product_attention` (q kᵀ and weights·v) and
`aten::_convolution_mode` (a conv with `padding="same"`, by fvcore's conv formula). Our attention
rows also count one scaling and the softmax's multiplications per score. *where it differs*: the
module classes whose own forward makes the difference (ours minus fvcore, per class: instances,
mults, % of fvcore's). *s*: seconds of `score_model` / of fvcore, one thread."""


def render(rows: Sequence[Row], chosen: int, meta: Mapping[str, str],
           explanations: Mapping[str, str]) -> str:
    """The whole ZOO.md: header, summary, disagreements, then one table per source."""
    lines = [
        "# Model-zoo sweep", "",
        "Generated by `tests/bench/zoo_sweep.py`; rerun it to refresh this file.", "",
        f"- command: `{meta['command']}` (from the repository root)",
        f"- date: {meta['date']}; revision: {meta['revision']}; analyzer code: {meta['code']}",
        f"- {meta['versions']}; {meta['machine']}",
    ]
    dates = sorted(str(r["measured"]) for r in rows if r.get("measured"))
    if dates:
        lines.append(f"- rows measured from {dates[0]} to {dates[-1]} (UTC), each in its own "
                     "process, resumed from the sweep's cache")
    codes = Counter(r.get("code") for r in rows)
    if len(codes) > 1:
        lines.append(f"- rows come from {len(codes)} versions of the analyzer code: "
                     + ", ".join(f"{c}: {n}" for c, n in codes.most_common())
                     + " (rerun with `--stale` to bring them all to the current one)")
    lines += ["", HOW_TO_READ, "", "## Summary", "", *_summary(rows, chosen, explanations)]
    for source in ("torchvision", "timm"):
        part = [r for r in rows if r["source"] == source]
        if part:
            lines += ["", f"## {source}", "", HEADER,
                      *(_model_row(r, explanations) for r in part)]
    return "\n".join(lines) + "\n"
