"""Objects from a stream of chunks: in order, within a size limit, hash-checked, whole.

``fedvc.wire`` turns each ObjectChunk message into a ``Chunk``; this module puts the
chunks of one object back together and hands on only a complete object whose bytes hash
to its id. Both ends of the gRPC wire use it: the coordinator for uploads, a participant's
link for downloads.

Why an anonymous memory map for the object being assembled: it is allocated at the
announced size at once (so no copy ever grows or moves), yet costs nothing until bytes
arrive, so a peer announcing a huge object and sending little commits little memory; and
the store takes the finished buffer as it is (a memoryview), so objects of several GB
(over 2 GiB included) need no second copy. The hash is updated chunk by chunk as the
bytes arrive, so a damaged or forged object is refused before anything is stored; an
object the stream stops inside is dropped whole.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterable, Iterator
from typing import cast

from fedvc.objects import OBJECT_KINDS, ObjectId, ObjectKind, object_hasher
from fedvc.store.base import CorruptObjectError
from fedvc.transport import WireObject
from fedvc.wire import Chunk, WireError, decode_chunk, fail, object_id

MAX_OBJECT_SIZE = 16 << 30
"""The largest object a receiver accepts unless told otherwise (16 GiB)."""


class TruncatedStreamError(WireError):
    """An object stream ended before an object it started was complete."""


class ObjectAssembler:
    """Turns a sequence of chunks back into checked ``WireObject``s.

    ``feed`` returns each object once its last byte has arrived and its hash matches its
    id; ``finish`` raises ``TruncatedStreamError`` if the stream stopped inside an object,
    whose bytes are then simply dropped (nothing partial is ever handed on).
    """

    def __init__(self, max_object_size: int = MAX_OBJECT_SIZE) -> None:
        self.max_object_size = max_object_size
        self._oid: ObjectId | None = None
        self._kind: ObjectKind = "blob"
        self._size = 0
        self._received = 0
        self._buffer: mmap.mmap | None = None
        self._hash = hashlib.sha256()

    def feed(self, chunk: Chunk) -> WireObject | None:
        if chunk.oid:
            self._start(chunk)
        elif self._oid is None:
            raise fail(
                "ObjectChunk",
                "a first chunk naming its object (oid, kind, total_size)",
                f"a chunk naming no object, at offset {chunk.offset}",
            )
        elif chunk.kind or chunk.total_size or chunk.offset != self._received:
            raise fail(
                f"chunk of object {self._oid}",
                f"the next chunk at offset {self._received}, naming nothing",
                f"offset {chunk.offset}",
            )
        if self._received + len(chunk.data) > self._size:
            raise fail(
                f"object {self._oid}",
                f"{self._size} bytes in all",
                f"{self._received + len(chunk.data)} bytes or more",
            )
        return self._add(chunk.data)

    def finish(self) -> None:
        if self._oid is not None:
            oid, received, size = self._oid, self._received, self._size
            self._oid, self._buffer = None, None
            raise TruncatedStreamError(
                f"the stream ended inside object {oid} after {received} of its {size} bytes; "
                "the partial object was dropped: send it again, whole"
            )

    def _start(self, chunk: Chunk) -> None:
        if self._oid is not None:
            raise fail(
                f"object {self._oid}",
                f"its remaining {self._size - self._received} bytes",
                f"the start of object {chunk.oid}",
            )
        oid = object_id(chunk.oid, "ObjectChunk.oid")
        if chunk.kind not in OBJECT_KINDS:
            raise fail(f"kind of object {oid}", " or ".join(OBJECT_KINDS), chunk.kind)
        if chunk.total_size > self.max_object_size:
            raise fail(
                f"size of object {oid}",
                f"at most {self.max_object_size} bytes (this receiver's limit)",
                chunk.total_size,
            )
        if chunk.offset != 0:
            raise fail(f"first chunk of object {oid}", "offset 0", chunk.offset)
        self._oid, self._kind = oid, cast(ObjectKind, chunk.kind)
        self._size, self._received = chunk.total_size, 0
        self._hash = object_hasher(self._kind, self._size)
        if len(chunk.data) == self._size:
            self._buffer = None  # the whole object in one chunk: no buffer, no copy
            return
        try:
            self._buffer = mmap.mmap(-1, max(self._size, 1))
        except OSError as exc:
            self._oid = None
            raise WireError(
                f"object {oid} ({self._size} bytes) does not fit in this receiver's memory "
                f"({exc.strerror}): lower the sender's object sizes or the limit"
            ) from None

    def _add(self, data: bytes | memoryview) -> WireObject | None:
        self._hash.update(data)
        if self._buffer is not None:
            self._buffer[self._received : self._received + len(data)] = data
        self._received += len(data)
        if self._received < self._size:
            return None
        assert self._oid is not None
        oid, kind, buffer = self._oid, self._kind, self._buffer
        self._oid, self._buffer = None, None
        actual = self._hash.hexdigest()
        if actual != oid:
            raise CorruptObjectError(
                oid,
                f"the {kind} received hashes to {actual}; it was damaged or forged in transit "
                "and was not stored",
            )
        payload = data if buffer is None else memoryview(buffer)[: self._size]
        return WireObject(oid, kind, payload, checked=True)


def decode_objects(
    messages: Iterable[bytes], max_object_size: int = MAX_OBJECT_SIZE
) -> Iterator[WireObject]:
    """The checked objects carried by a stream of serialized ObjectChunk messages."""
    assembler = ObjectAssembler(max_object_size)
    for data in messages:
        obj = assembler.feed(decode_chunk(data))
        if obj is not None:
            yield obj
    assembler.finish()
