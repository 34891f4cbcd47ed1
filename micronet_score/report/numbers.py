"""Numbers as text: the one place that decides how a count, a score or a fraction is written."""

from __future__ import annotations

from collections.abc import Sequence

from micronet_score.views import Row


def format_count(value: float) -> str:
    """Short human form with three significant digits: 1.23M, 45.6K, 789, 12.5."""
    if abs(value) < 999.95:
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    for threshold, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        scaled = value / threshold
        digits = 2 if abs(scaled) < 9.995 else 1 if abs(scaled) < 99.95 else 0
        text = f"{scaled:.{digits}f}"
        if abs(float(text)) < 1000 or suffix == "T":
            return text + suffix
    raise AssertionError("unreachable")


def format_exact(value: float) -> str:
    """Every digit, with thousands separators: 1,234,567 or 1,234.25."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def format_full(value: float) -> str:
    """Every digit the value has (the shortest text that reads back as it), with thousands
    separators: for two values that `format_exact` cannot tell apart."""
    text = repr(float(value))
    if not text.lstrip("-")[0].isdigit() or "e" in text:
        return text
    whole, _, fraction = text.partition(".")
    return f"{int(whole):,}" + (f".{fraction}" if fraction.strip("0") else "")


def format_percent(fraction: float) -> str:
    """A whole percentage that never rounds a non-zero fraction to 0% or a partial one to 100%."""
    if fraction <= 0:
        return "0%"
    if fraction < 0.01:
        return "<1%"
    if fraction >= 1:
        return "100%"
    if fraction > 0.99:
        return ">99%"
    return f"{fraction:.0%}"


def format_percent_digits(fraction: float, digits: int) -> str:
    """A percentage with `digits` decimals, for two fractions a whole percent cannot tell apart."""
    return f"{fraction:.{digits}%}"


def format_share(fraction: float) -> str:
    """A row's share of the score, one decimal: 23.1%."""
    return f"{fraction:.1%}"


def format_relative(before: float, after: float) -> str:
    """The relative change, signed, in parentheses with a leading space; empty from zero."""
    if before == 0:
        return ""
    return f" ({(after - before) / before:+.1%})"


def format_score(value: float) -> str:
    """Six decimals; a score too small for them (a toy model) with four significant digits."""
    return f"{value:.6f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.4g}"


def format_score_against(score: float, bar: float) -> str:
    """The score with as many digits as it takes to differ from `bar` (up to 17 decimals)."""
    shown, digits = format_score(score), 6
    while score != bar and digits < 17 and f"{score:.{digits}f}" == f"{bar:.{digits}f}":
        digits += 1
        shown = f"{score:.{digits}f}"
    return shown


def format_bar(value: float) -> str:
    """A threshold the user gave (--max-score), as short as it was typed: 0.02."""
    return f"{value:g}"


def format_score_change(value: float) -> str:
    """Signed, six decimals; a change too small for them in scientific notation, never -0.000000."""
    if value == 0:
        return "0"
    return f"{value:+.6f}" if abs(value) >= 5e-7 else f"{value:+.1e}"


def format_signed(value: float, text: str) -> str:
    """`text` (a formatted change) with a + in front when the change is positive."""
    return f"+{text}" if value > 0 else text


def format_shape(shape: Sequence[int]) -> str:
    """A shape as 3x32x32 (per example: shapes in reports are without the batch)."""
    return "x".join(str(d) for d in shape)


def _bits_range(values: Sequence[int]) -> str:
    if not values:
        return "-"
    return str(values[0]) if len(values) == 1 else f"{min(values)}..{max(values)}"


def row_bits(row: Row) -> str:
    """Weights/activations; a range such as 8..32 when the summed layers differ."""
    return f"{_bits_range(row.weight_bits)}/{_bits_range(row.act_bits)}"


_FORMAT_LABELS = {"dense": "", "sparse": "sparse", "kernel_mask": "kernel", "filter_mask": "filter"}


def storage_text(row: Row) -> str:
    """The row's storage, short, with its format when it is not dense: 40.0K sparse."""
    label = _FORMAT_LABELS.get(row.storage_format, row.storage_format)
    return f"{format_count(row.storage)} {label}" if label else format_count(row.storage)


def sparsity_text(row: Row) -> str:
    """The row's sparsity as a whole percentage; empty for a row without parameters."""
    return format_percent(row.sparsity) if row.params else ""


_EIGHTHS = " ▏▎▍▌▋▊▉"


def share_bar(fraction: float, width: int = 8, unicode: bool = True) -> str:
    """A bar `width` characters long at fraction 1, drawn in eighths of a block (or '#')."""
    fraction = min(max(fraction, 0.0), 1.0)
    if not unicode:
        return "#" * round(fraction * width)
    full, part = divmod(round(fraction * width * 8), 8)
    return "█" * full + (_EIGHTHS[part] if part else "")
