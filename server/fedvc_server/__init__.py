"""fedvc coordinator application: the gRPC servicer, configuration and metrics.

The round engine itself lives in the ``fedvc`` library (``fedvc.coordinator``); this
package only puts it on the network.
"""

__version__ = "0.1.0"
