"""Bridges to other federated learning frameworks.

Each bridge lives in its own module and is the only place that imports its framework, so
``import fedvc`` never needs one installed: ``fedvc.compat.flower`` needs ``flwr``
(``pip install "fedvc[flower]"``).
"""
