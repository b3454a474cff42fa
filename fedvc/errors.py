"""The root of every error fedvc raises on purpose.

Specific subclasses live next to the code that raises them (``objects.MalformedObjectError``,
``store.ObjectNotFoundError``, ...), so a caller can catch one precise failure or, with
``FedvcError``, anything fedvc reports. Messages name the object, what was expected,
what was found, and what to do.
"""

from __future__ import annotations


class FedvcError(Exception):
    """Anything fedvc reports deliberately: bad input, a corrupt store, a lost race."""
