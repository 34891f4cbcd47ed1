"""Bounds on the work a small input can ask for, each with the reason it exists.

A few bytes of command line or file can otherwise ask for gigabytes: an input shape of
3x30000x30000, a model "file" that is /dev/zero. Each bound is checked before the work starts
and fails with one line that names the way to raise it, where there is one.
"""

from __future__ import annotations

# Elements of the example input, batch of 1 included: 2**25 is 128 MiB at float32, far above
# any image or token model's input (3x2048x2048 is 12.6M), and what a fallback to torch.export
# may really allocate. `--max-input-elements` raises it.
MAX_INPUT_ELEMENTS = 2**25

# Bytes read from a model path that is no regular file (a pipe, a device such as /dev/zero,
# process substitution): such a stream has no size to check first, so reading stops here.
MAX_STREAM_BYTES = 2**30


def check_input_elements(shape: tuple[int, ...], limit: int) -> None:
    """Raise UserError when an input of `shape` (batch excluded) exceeds `limit` elements."""
    from micronet_score.errors import UserError

    elements = 1
    for size in shape:
        elements *= size
    if elements > limit:
        text = "x".join(str(d) for d in shape)
        raise UserError(
            f"input shape {text} has {elements:,} elements, over the limit of {limit:,}; "
            "pass --max-input-elements with a larger number if it is really meant "
            "(tracing may need that much memory)"
        )
