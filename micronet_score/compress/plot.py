"""The Pareto plot of a run: test accuracy against score, one point per candidate.

Drawn on a bare `Figure` with the Agg canvas, so no pyplot state or display is involved. The
non-dominated candidates (no other has a lower or equal score with a higher or equal accuracy)
are joined as a step line, the best accuracy reachable at each score; the others are drawn
unjoined. Stage labels are placed inside the axes, clear of other labels and points and, where
there is room, of the drawn lines; the legend sits below the axes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

if TYPE_CHECKING:
    from micronet_score.compress.candidates import Candidate

# 9 x 6 inches at 150 dpi: 1350 x 900 pixels, readable at full size and in a report.
FIGSIZE = (9.0, 6.0)
DPI = 150
# A linear score axis unless the scores (and the score bar) span more than this factor.
LOG_SPAN = 10.0
# Where a stage label may go, in points from its point: close around it first, then farther
# out (with a leader line) when the close places are taken.
_DIRECTIONS = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_DISTANCES = (6.0, 18.0, 32.0)
_MARKER_SIZE = 7.0  # points


class Scored(Protocol):
    """What the plot reads of a candidate (`Candidate` has it)."""

    @property
    def stage(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def accuracy(self) -> float: ...


def pareto_front(candidates: Sequence[Scored]) -> list[Scored]:
    """The non-dominated candidates, by score ascending (so accuracy ascending too).

    A candidate is dominated when another has a score at most its own and an accuracy at least
    its own, and differs in one of them; candidates equal in both are all kept.
    """
    front = [
        c for c in candidates
        if not any(o.score <= c.score and o.accuracy >= c.accuracy
                   and (o.score, o.accuracy) != (c.score, c.accuracy) for o in candidates)
    ]
    return sorted(front, key=lambda c: (c.score, c.accuracy))


def pareto_figure(
    candidates: Sequence[Candidate],
    *,
    title: str,
    accuracy_bar: float | None = None,
    score_bar: float | None = None,
) -> Figure:
    """The plot of one or more candidates as a laid-out `Figure` (FIGSIZE at DPI, the Agg
    canvas attached): score on x, accuracy in percent on y.

    ``accuracy_bar`` (a fraction) and ``score_bar`` are drawn as dashed lines when given. The
    score axis is logarithmic only when the values span more than LOG_SPAN; tick labels are
    plain decimals either way. The legend sits below the axes, where it hides nothing.
    """
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots()
    front = pareto_front(candidates)
    others = [c for c in candidates if all(c is not f for f in front)]
    axes.step([c.score for c in front], [100 * c.accuracy for c in front], where="post",
              color="tab:blue", marker="o", markersize=_MARKER_SIZE, label="Pareto front")
    if others:
        axes.plot([c.score for c in others], [100 * c.accuracy for c in others], linestyle="none",
                  marker="o", markersize=_MARKER_SIZE, markerfacecolor="white",
                  color="tab:gray", label="dominated")
    if accuracy_bar is not None:
        axes.axhline(100 * accuracy_bar, color="tab:red", linestyle="--",
                     label=f"accuracy bar {_plain(100 * accuracy_bar)}%")
    if score_bar is not None:
        axes.axvline(score_bar, color="tab:green", linestyle="--",
                     label=f"score bar {_plain(score_bar)}")
    _set_limits(axes, [c.score for c in candidates] + ([] if score_bar is None else [score_bar]),
                [100 * c.accuracy for c in candidates]
                + ([] if accuracy_bar is None else [100 * accuracy_bar]))
    axes.set_xlabel("score (lower is better)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=4, frameon=False)
    figure.draw_without_rendering()  # lays the axes out, so labels are placed in final pixels
    lines = _line_boxes(axes, front, accuracy_bar, score_bar)
    _place_labels(axes, candidates, lines, canvas.get_renderer())  # type: ignore[no-untyped-call]
    return figure


def plot_pareto(
    candidates: Sequence[Candidate],
    path: Path,
    *,
    title: str,
    accuracy_bar: float | None = None,
    score_bar: float | None = None,
) -> None:
    """Write `pareto_figure` as a PNG to ``path``."""
    figure = pareto_figure(candidates, title=title, accuracy_bar=accuracy_bar,
                           score_bar=score_bar)
    figure.savefig(path, dpi=DPI)


def _plain(value: float, _position: object = None) -> str:
    """A number in plain decimals with up to five significant digits: 0.018, 97.15, 250."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = max(0, 4 - math.floor(math.log10(abs(value))))
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _set_limits(axes: Axes, scores: list[float], accuracies: list[float]) -> None:
    """Axis ranges with room around the points for their labels, and the score axis's scale."""
    low, high = min(scores), max(scores)
    if low > 0 and high / low > LOG_SPAN:
        axes.set_xscale("log")
        pad = (high / low) ** 0.08
        axes.set_xlim(low / pad, high * pad)
        # Ticks at 1, 2 and 5 of each decade over a few decades; beyond, they would collide.
        subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 3 else (1.0,)
        axes.xaxis.set_major_locator(LogLocator(subs=subs))
        axes.xaxis.set_minor_formatter(NullFormatter())
    else:
        pad = 0.08 * (high - low) or 0.1 * abs(high) or 0.01
        axes.set_xlim(low - pad, high + pad)
    axes.xaxis.set_major_formatter(FuncFormatter(_plain))
    axes.yaxis.set_major_formatter(FuncFormatter(_plain))
    low, high = min(accuracies), max(accuracies)
    pad = 0.1 * (high - low) or 1.0
    axes.set_ylim(low - pad, high + pad)


def _place_labels(
    axes: Axes, candidates: Sequence[Scored], lines: list[Bbox], renderer: RendererBase
) -> None:
    """Annotate each point with its stages (one label for candidates at the same point), at
    the place that overlaps least, first, other labels and points, then ``lines`` (thin boxes
    along the drawn lines), preferring places close to the point; every place lies inside the
    axes. A label placed farther than the closest ring gets a leader line."""
    frame = axes.get_window_extent(renderer)
    half = _MARKER_SIZE / 2 * axes.figure.dpi / 72 + 1  # a marker's half width, in pixels
    stages: dict[tuple[float, float], list[str]] = {}
    for c in candidates:
        stages.setdefault((c.score, 100 * c.accuracy), []).append(c.stage)
    taken = [_box(x - half, y - half, x + half, y + half)
             for x, y in (axes.transData.transform(point) for point in stages)]
    for point, names in stages.items():
        text = ", ".join(names)
        best: tuple[tuple[float, float, int], float, float, Bbox] | None = None
        for rank, (distance, (dx, dy)) in enumerate(itertools.product(_DISTANCES, _DIRECTIONS)):
            trial = _annotate(axes, text, point, dx * distance, dy * distance)
            box = text_box(trial, renderer)
            trial.remove()
            if not _contains(frame, box):
                continue
            cost = (sum(_overlap(box, other) for other in taken),
                    sum(_overlap(box, line) for line in lines), rank)
            if best is None or cost < best[0]:
                best = (cost, dx * distance, dy * distance, box)
        if best is None:  # no room inside at all: beside the point, as a last resort
            _annotate(axes, text, point, _DISTANCES[0], _DISTANCES[0])
            continue
        _, x_offset, y_offset, box = best
        leader = max(abs(x_offset), abs(y_offset)) > _DISTANCES[0]
        _annotate(axes, text, point, x_offset, y_offset, leader=leader)
        taken.append(box)


def _line_boxes(
    axes: Axes, front: Sequence[Scored], accuracy_bar: float | None, score_bar: float | None
) -> list[Bbox]:
    """Thin boxes along the front's steps and the bars, in pixels: what labels should not
    cross."""
    width = 2.0
    pixels = [axes.transData.transform((c.score, 100 * c.accuracy)) for c in front]
    boxes = []
    for (x0, y0), (x1, y1) in itertools.pairwise(pixels):  # across at y0, then up at x1
        boxes += [_box(x0, y0 - width, x1, y0 + width), _box(x1 - width, y0, x1 + width, y1)]
    frame = axes.bbox
    if accuracy_bar is not None:
        y = axes.transData.transform((axes.get_xlim()[0], 100 * accuracy_bar))[1]
        boxes.append(_box(frame.x0, y - width, frame.x1, y + width))
    if score_bar is not None:
        x = axes.transData.transform((score_bar, axes.get_ylim()[0]))[0]
        boxes.append(_box(x - width, frame.y0, x + width, frame.y1))
    return boxes


def _box(x0: float, y0: float, x1: float, y1: float) -> Bbox:
    return Bbox.from_extents(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def text_box(label: Annotation, renderer: RendererBase) -> Bbox:
    """The pixels a label's text covers, without its leader line."""
    label.update_positions(renderer)  # the text's place follows its point only once updated
    return Text.get_window_extent(label, renderer)


def _annotate(
    axes: Axes, text: str, point: tuple[float, float], dx: float, dy: float, *,
    leader: bool = False,
) -> Annotation:
    """``text`` at ``dx``, ``dy`` points from ``point`` (data), on the side facing away."""
    return axes.annotate(
        text, point,
        xytext=(dx, dy), textcoords="offset points", fontsize=9,
        ha="left" if dx > 0 else "right" if dx < 0 else "center",
        va="bottom" if dy > 0 else "top" if dy < 0 else "center",
        arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6,
                    "shrinkA": 0, "shrinkB": 5} if leader else None,
        annotation_clip=True, in_layout=False,
    )


def _contains(outer: Bbox, inner: Bbox) -> bool:
    return bool(outer.x0 <= inner.x0 and inner.x1 <= outer.x1
                and outer.y0 <= inner.y0 and inner.y1 <= outer.y1)


def _overlap(a: Bbox, b: Bbox) -> float:
    """The area two boxes share, in square pixels."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return float(max(width, 0.0) * max(height, 0.0))
