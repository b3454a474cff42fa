"""Finding the user's code by name: ``package.module:attribute``.

Tasks, model factories, data loaders and initial models are named this way in command
lines and config files, so fedvc never needs to know the user's code in advance.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedvc.errors import FedvcError


class UserCodeError(FedvcError):
    """A ``package.module:attribute`` name that cannot be imported."""


def import_object(spec: str, what: str) -> Any:
    """``package.module:attribute`` → the attribute; ``what`` names it in errors."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UserCodeError(f"{what} must look like package.module:name, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserCodeError(
            f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); is the package "
            "installed, or its directory on PYTHONPATH?"
        ) from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise UserCodeError(
            f"{what} {spec!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
