"""micronet-score: what a PyTorch model costs under the MicroNet Challenge rules.

`score_model` is imported lazily so that `import micronet_score` (and the CLI's `--help`) do not
pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "OpSpec", "RegistrationError", "Report", "Trait", "UserError", "__version__", "load_model",
    "register_op", "score_model", "unregister_op",
]
# The op table's public names: torch-free, so they are imported at once.
from micronet_score.ops.spec import (
    OpSpec,
    RegistrationError,
    Trait,
    register_op,
    unregister_op,
)

if TYPE_CHECKING:
    from micronet_score.api import score_model
    from micronet_score.errors import UserError
    from micronet_score.loading import load_model
    from micronet_score.results import Report


def __getattr__(name: str) -> Any:
    if name == "score_model":
        from micronet_score.api import score_model

        return score_model
    if name == "load_model":
        from micronet_score.loading import load_model

        return load_model
    if name == "Report":
        from micronet_score.results import Report

        return Report
    if name == "UserError":
        from micronet_score.errors import UserError

        return UserError
    raise AttributeError(f"module 'micronet_score' has no attribute {name!r}")
