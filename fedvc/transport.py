"""What a participant and a coordinator say to each other, whatever carries it.

``CoordinatorLink`` is the participant's view of a coordinator: ask for work, sync
objects by id, submit an update commit. The ``Coordinator`` implements it directly, so an
in-process federation (simulations, tests) calls it with no serialisation at all;
``InProcessLink`` adds what a network would (copying bytes, checking every id on
arrival) for tests that want the wire's guarantees without a socket; the gRPC client in
``fedvc_client`` implements the same protocol over the network.

The sync is content-addressed: a participant lists the objects of the base commit, asks
only for those it lacks, and checks every object's hash on arrival, so an unchanged tensor
never travels twice and a corrupted one is never stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from fedvc.objects import ObjectId, ObjectKind, hash_object
from fedvc.store.base import CorruptObjectError, ObjectStore


@dataclass(frozen=True)
class RoundOffer:
    """Work: train round ``number`` from ``base`` with ``config``; submit before ``deadline``."""

    number: int
    base: ObjectId
    config: Mapping[str, Any]
    deadline: float


@dataclass(frozen=True)
class Wait:
    """No work for this client now (round full, or closing): ask again after ``seconds``."""

    seconds: float
    reason: str


@dataclass(frozen=True)
class Finished:
    """The run is over: every configured round is merged."""

    rounds: int


Offer = RoundOffer | Wait | Finished


@dataclass(frozen=True)
class Verdict:
    """The coordinator's answer to a submission: admitted, or rejected with a reason."""

    admitted: bool
    reason: str = ""  # one of fedvc.round.REJECTION_REASONS when rejected
    detail: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WireObject:
    """One stored object as it travels: its id, kind and payload bytes."""

    oid: ObjectId
    kind: ObjectKind
    payload: bytes | memoryview
    checked: bool = False  # True once the receiver has hashed the payload to ``oid``

    def check(self) -> None:
        """Raise ``CorruptObjectError`` unless the bytes hash to the claimed id."""
        self._compare(hash_object(self.kind, self.payload), stored=False)

    def store_in(self, objects: ObjectStore) -> None:
        """Store the object, checking its id with the hash the store computes anyway (one
        hash, not two; an object that does not match its id is only ever kept under its
        true id, where nothing refers to it). An object the receiver already hashed on
        arrival (``checked``) is stored under its id without hashing it again."""
        hashed = self.oid if self.checked else None
        self._compare(objects.put(self.kind, self.payload, hashed=hashed), stored=True)

    def _compare(self, actual: ObjectId, *, stored: bool) -> None:
        if actual != self.oid:
            raise CorruptObjectError(
                self.oid,
                f"the {self.kind} received hashes to {actual}; it was damaged or forged in "
                f"transit{'' if stored else ' and was not stored'}",
            )


class CoordinatorLink(Protocol):
    """A participant's connection to its coordinator."""

    def next_round(self, key_id: str) -> Offer:
        """Ask for work as the client whose key id is ``key_id``."""
        ...

    def list_objects(self, commit: ObjectId) -> list[ObjectId]:
        """Ids of ``commit``, its snapshot and the snapshot's blobs (not its ancestors)."""
        ...

    def get_objects(self, ids: Sequence[ObjectId]) -> Iterator[WireObject]:
        """The named objects, in order, each hash checked on arrival by the link."""
        ...

    def missing(self, ids: Sequence[ObjectId]) -> list[ObjectId]:
        """Which of ``ids`` the coordinator lacks (what an upload must send)."""
        ...

    def put_objects(self, objects: Iterable[WireObject]) -> None:
        """Store objects on the coordinator; each is checked against its id first."""
        ...

    def submit(self, round_number: int, commit: ObjectId) -> Verdict:
        """Offer an update commit (already uploaded) for round ``round_number``."""
        ...


class InProcessLink:
    """A ``CoordinatorLink`` that copies bytes across, as a network would.

    The coordinator itself is a link with no copying at all (participants sharing its
    store then never transfer anything); this one keeps the participant's and the
    coordinator's objects apart, so a test sees exactly what a remote client would.
    """

    def __init__(self, coordinator: CoordinatorLink) -> None:
        self._coordinator = coordinator
        self.bytes_sent = 0
        self.bytes_received = 0

    def next_round(self, key_id: str) -> Offer:
        return self._coordinator.next_round(key_id)

    def list_objects(self, commit: ObjectId) -> list[ObjectId]:
        return list(self._coordinator.list_objects(commit))

    def get_objects(self, ids: Sequence[ObjectId]) -> Iterator[WireObject]:
        for obj in self._coordinator.get_objects(ids):
            copy = WireObject(obj.oid, obj.kind, bytes(obj.payload))
            self.bytes_received += len(copy.payload)
            copy.check()
            yield replace(copy, checked=True)

    def missing(self, ids: Sequence[ObjectId]) -> list[ObjectId]:
        return list(self._coordinator.missing(list(ids)))

    def put_objects(self, objects: Iterable[WireObject]) -> None:
        def copies() -> Iterator[WireObject]:
            for obj in objects:
                self.bytes_sent += len(obj.payload)
                yield WireObject(obj.oid, obj.kind, bytes(obj.payload))

        self._coordinator.put_objects(copies())

    def submit(self, round_number: int, commit: ObjectId) -> Verdict:
        return self._coordinator.submit(round_number, commit)
