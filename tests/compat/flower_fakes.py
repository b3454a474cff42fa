"""Stand-ins the Flower tests share (the fixture that sets Flower's identity is in conftest)."""

from __future__ import annotations

from fedvc.signing import SigningKey

SERVER_KEY = SigningKey.from_seed(bytes(32))


class Nodes:
    """The one part of a Grid that configure_train uses: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids
