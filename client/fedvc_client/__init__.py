"""fedvc client runtime: the gRPC transport and the reference training loop.

The participant logic lives in the ``fedvc`` library (``fedvc.participant``); this package
connects it to a coordinator and to the user's training code.
"""

__version__ = "0.1.0"
