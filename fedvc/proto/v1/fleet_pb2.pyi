# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NextRoundRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RoundOffer(_message.Message):
    __slots__ = ("number", "base", "config_json", "deadline")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    number: int
    base: str
    config_json: str
    deadline: float
    def __init__(self, number: _Optional[int] = ..., base: _Optional[str] = ..., config_json: _Optional[str] = ..., deadline: _Optional[float] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("seconds", "reason")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    reason: str
    def __init__(self, seconds: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    def __init__(self, rounds: _Optional[int] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("round", "wait", "finished")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    round: RoundOffer
    wait: Wait
    finished: Finished
    def __init__(self, round: _Optional[_Union[RoundOffer, _Mapping]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("commit",)
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    commit: str
    def __init__(self, commit: _Optional[str] = ...) -> None: ...

class ObjectIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ObjectChunk(_message.Message):
    __slots__ = ("oid", "kind", "total_size", "offset", "data")
    OID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    oid: str
    kind: str
    total_size: int
    offset: int
    data: bytes
    def __init__(self, oid: _Optional[str] = ..., kind: _Optional[str] = ..., total_size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutSummary(_message.Message):
    __slots__ = ("stored", "bytes")
    STORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    stored: int
    bytes: int
    def __init__(self, stored: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("round", "commit")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    round: int
    commit: str
    def __init__(self, round: _Optional[int] = ..., commit: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("admitted", "reason", "detail", "round_closed", "extra_json")
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ROUND_CLOSED_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    admitted: bool
    reason: str
    detail: str
    round_closed: str
    extra_json: str
    def __init__(self, admitted: bool = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., round_closed: _Optional[str] = ..., extra_json: _Optional[str] = ...) -> None: ...
