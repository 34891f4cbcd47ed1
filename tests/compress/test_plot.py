"""The Pareto plot: axis scale and plain tick labels, accuracy in percent, the front as a step
line, labels inside the axes and apart, legend outside the axes, a large enough image."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox
from PIL import Image

from micronet_score.compress.plot import pareto_figure, pareto_front, plot_pareto, text_box
from micronet_score.compress.recipe import Candidate


def candidate(stage: str, score: float, accuracy: float) -> Candidate:
    return Candidate(stage=stage, kind="train", accuracy=accuracy, params=1.0, ops=1.0,
                     score=score, sparsity=0.0, bits="16", file=f"{stage}/model.pt2",
                     score_args=(), seconds=0.0, notes="")


# Scores from 0.018 to 0.3 (16x, so a log axis). "teacher" is dominated by "float" (higher score,
# lower accuracy); "retrained" by "pruned" (same score, lower accuracy). Stage order is not
# score order, so joining points in stage order would zigzag.
WIDE = [
    candidate("float", 0.25, 0.945), candidate("teacher", 0.3, 0.93),
    candidate("pruned", 0.09, 0.936), candidate("distilled", 0.21, 0.94),
    candidate("retrained", 0.09, 0.925), candidate("quantized", 0.018, 0.934),
]
# The front by hand, by score: (score, accuracy in percent).
WIDE_FRONT = [(0.018, 93.4), (0.09, 93.6), (0.21, 94.0), (0.25, 94.5)]
# Scores from 0.0183 to 0.0251 (1.4x with the 0.02 bar): a linear axis.
NARROW = [
    candidate("float", 0.0251, 0.931), candidate("pruned", 0.0214, 0.927),
    candidate("pruned2", 0.0212, 0.9275), candidate("quantized", 0.0183, 0.915),
    candidate("q2", 0.0185, 0.912),
]

# The cifar10 recipe's shape: three float stages at one score within a point of accuracy, the
# pruned and quantized ones cheaper, and a starting model far below, at the bottom of the axes
# where a legend inside them would sit.
CIFAR = [
    candidate("input", 0.0452, 0.10), candidate("mixup", 0.0452, 0.945),
    candidate("distilled", 0.0452, 0.950), candidate("finetuned", 0.0452, 0.951),
    candidate("pruned", 0.0301, 0.941), candidate("quantized", 0.0167, 0.935),
]


def figure_of(candidates: list[Candidate]) -> Figure:
    figure = pareto_figure(candidates, title="run: densenet121_gr4", accuracy_bar=0.90,
                           score_bar=0.02)
    figure.canvas.draw()
    return figure


def line(figure: Figure, label: str) -> tuple[list[float], list[float]]:
    """The x and y data of the line with legend entry ``label``."""
    (found,) = [ln for ln in figure.axes[0].lines if ln.get_label() == label]
    return np.asarray(found.get_xdata()).tolist(), np.asarray(found.get_ydata()).tolist()


def drawn(figure: Figure, label: str) -> Line2D:
    (found,) = [ln for ln in figure.axes[0].lines if ln.get_label() == label]
    return found


def test_the_front_is_the_non_dominated_candidates_by_score() -> None:
    assert [(c.score, round(100 * c.accuracy, 6)) for c in pareto_front(WIDE)] == WIDE_FRONT
    # Two candidates at the same point both stay; one beaten in accuracy alone does not.
    same = [candidate("input", 0.3, 0.95), candidate("float", 0.3, 0.95),
            candidate("worse", 0.3, 0.94)]
    assert [c.stage for c in pareto_front(same)] == ["input", "float"]


def test_the_front_is_a_step_line_and_the_rest_unjoined() -> None:
    figure = figure_of(WIDE)
    assert drawn(figure, "Pareto front").get_drawstyle() == "steps-post"
    scores, accuracies = line(figure, "Pareto front")
    assert scores == [score for score, _ in WIDE_FRONT]
    assert accuracies == pytest.approx([accuracy for _, accuracy in WIDE_FRONT])
    assert drawn(figure, "dominated").get_linestyle() == "None"
    scores, accuracies = line(figure, "dominated")
    assert scores == [0.3, 0.09]  # teacher, retrained
    assert accuracies == pytest.approx([93.0, 92.5])


@pytest.mark.parametrize(("candidates", "scale"), [(WIDE, "log"), (NARROW, "linear")])
def test_score_axis_scale_and_plain_tick_labels(candidates: list[Candidate], scale: str) -> None:
    axes = figure_of(candidates).axes[0]
    assert axes.get_xscale() == scale
    labels = [label.get_text() for axis in (axes.xaxis, axes.yaxis)
              for label in axis.get_ticklabels(which="both")]
    shown = [text for text in labels if text]
    assert len(shown) >= 8
    assert all(re.fullmatch(r"\d+(\.\d+)?", text) for text in shown), shown
    assert axes.xaxis.get_offset_text().get_text() == axes.yaxis.get_offset_text().get_text() == ""


def test_accuracy_is_in_percent_on_the_axis_and_in_the_legend() -> None:
    figure = figure_of(WIDE)
    axes = figure.axes[0]
    assert axes.get_ylabel() == "test accuracy (%)"
    assert line(figure, "accuracy bar 90%")[1] == [90.0, 90.0]
    low, high = axes.get_ylim()
    assert 85 < low < 90 and 94.5 < high < 100
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        "Pareto front", "dominated", "accuracy bar 90%", "score bar 0.02"]


@pytest.mark.parametrize("candidates", [WIDE, NARROW, CIFAR], ids=["wide", "narrow", "cifar"])
def test_labels_lie_inside_the_axes_apart_from_each_other_and_the_points(
    candidates: list[Candidate],
) -> None:
    figure = figure_of(candidates)
    axes = figure.axes[0]
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = {text.get_text(): text_box(text, renderer) for text in axes.texts
             if isinstance(text, Annotation)}
    assert sorted(boxes) == sorted(c.stage for c in candidates)
    frame = axes.get_window_extent(renderer)
    for box in boxes.values():
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 \
            and box.y1 <= frame.y1
    for (one, a), (other, b) in itertools.combinations(boxes.items(), 2):
        assert Bbox.intersection(a, b) is None, (one, other)
    for c in candidates:
        x, y = axes.transData.transform((c.score, 100 * c.accuracy))
        assert not any(box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1
                       for box in boxes.values()), c.stage
    # The legend sits outside the axes, so it hides no point and no label.
    (legend,) = figure.legends
    assert legend.get_window_extent(renderer).y1 <= frame.y0


def test_the_png_is_at_least_1200_by_800(tmp_path: Path) -> None:
    path = tmp_path / "pareto.png"
    plot_pareto(WIDE, path, title="run: densenet121_gr4", accuracy_bar=0.9, score_bar=0.02)
    with Image.open(path) as image:
        width, height = image.size
    assert width >= 1200 and height >= 800
    # The same size the figure was laid out at, so label places hold in the file.
    figure = figure_of(WIDE)
    assert (width, height) == tuple(figure.get_size_inches() * figure.dpi)
