"""Records as bytes, for the stores that keep one opaque value per key.

Shared by :mod:`~django_idempotency.backends.cache` and
:mod:`~django_idempotency.backends.redis`. Not pickle: a value read back from
a shared store must never be able to run code, and a record must stay
readable by the next release (the first byte is the format version).

Layout of format version 2 (integers big-endian, strings UTF-8)::

    u8   format version (2)
    u8   state: 0 in progress, 1 completed
    u8   n, the length of the owner token (1..255 bytes)
    n    owner token
    --- claim section, written by the claim
    str  key, scope, fingerprint, method, path   (each: u32 length + bytes)
    f64  created_at
    f64  expires_at (end of the lease)
    --- completion section, only when completed
    f64  completed_at
    f64  expires_at (end of the replay window; overrides the lease's)
    u16  status
    str  reason phrase (empty: the status's standard phrase)
    u32  header count, then each name and value as str
    u32  body length + body bytes; 0xFFFFFFFF and no bytes: the body was not
         kept (the response cannot be replayed)

Why this shape: the state and the owner token sit at fixed offsets in front,
so a Redis Lua script can compare-and-set on the owner token without parsing
the rest, and completing a record is a splice the script can do blindly
(flip the state byte, append :func:`dump_completion`'s bytes), because the
claim section is never rewritten. ``dumps`` of a completed record produces
exactly those spliced bytes. An in-progress record ends with its lease's
end, so renewing the lease is a splice too: replace the last 8 bytes with
:func:`dump_lease_end`'s.
"""

from __future__ import annotations

import struct

from django_idempotency.records import Record, State, StoredResponse

FORMAT_VERSION = 2
STATE_IN_PROGRESS = 0
STATE_COMPLETED = 1
OWNER_TOKEN_OFFSET = 3
"""Byte offset of the owner token (its length is the byte just before it)."""
MAX_OWNER_TOKEN_BYTES = 255
BODY_NOT_KEPT = 0xFFFFFFFF
"""The body length that marks a response whose body was not kept."""

_HEADER = struct.Struct(">BBB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_TWO_F64 = struct.Struct(">dd")
_STATE_BYTES = {State.IN_PROGRESS: STATE_IN_PROGRESS, State.COMPLETED: STATE_COMPLETED}


class RecordFormatError(ValueError):
    """The bytes are not a record this version can read (foreign, truncated, newer)."""


def dumps(record: Record) -> bytes:
    """The record as bytes; a completed record must carry its response."""
    token = record.owner_token.encode()
    if not 1 <= len(token) <= MAX_OWNER_TOKEN_BYTES:
        raise ValueError(
            f"An owner token must be 1 to {MAX_OWNER_TOKEN_BYTES} bytes; got {len(token)}."
        )
    parts = [
        _HEADER.pack(FORMAT_VERSION, _STATE_BYTES[record.state], len(token)),
        token,
        *(
            _str(value)
            for value in (record.key, record.scope, record.fingerprint, record.method, record.path)
        ),
        _TWO_F64.pack(record.created_at, record.expires_at),
    ]
    if record.state is State.COMPLETED:
        if record.response is None or record.completed_at is None:
            raise ValueError("A completed record needs its response and completed_at.")
        parts.append(dump_completion(record.completed_at, record.expires_at, record.response))
    return b"".join(parts)


def dump_completion(completed_at: float, expires_at: float, response: StoredResponse) -> bytes:
    """The completion section a store appends to an in-progress record's bytes."""
    parts = [
        _TWO_F64.pack(completed_at, expires_at),
        _U16.pack(response.status),
        _str(response.reason),
        _U32.pack(len(response.headers)),
    ]
    for name, value in response.headers:
        parts += (_str(name), _str(value))
    if response.body is None:
        parts.append(_U32.pack(BODY_NOT_KEPT))
    else:
        parts += (_U32.pack(len(response.body)), response.body)
    return b"".join(parts)


def dump_lease_end(expires_at: float) -> bytes:
    """The 8 bytes that end an in-progress record: when its lease ends."""
    return _F64.pack(expires_at)


def loads(data: bytes, storage_key: str) -> Record:
    """The record stored under ``storage_key``, or :class:`RecordFormatError`."""
    reader = _Reader(data)
    version, state, token_length = reader.header()
    if version != FORMAT_VERSION:
        raise RecordFormatError(
            f"Unknown record format version {version}; this release reads {FORMAT_VERSION}."
        )
    if state not in (STATE_IN_PROGRESS, STATE_COMPLETED):
        raise RecordFormatError(f"Unknown record state byte {state}.")
    owner_token = reader.text(token_length)
    key, scope, fingerprint, method, path = (reader.string() for _ in range(5))
    created_at, expires_at = reader.two_floats()
    completed_at: float | None = None
    response: StoredResponse | None = None
    if state == STATE_COMPLETED:
        completed_at, expires_at = reader.two_floats()
        response = _load_response(reader)
    reader.end()
    return Record(
        storage_key=storage_key,
        key=key,
        scope=scope,
        fingerprint=fingerprint,
        method=method,
        path=path,
        state=State.COMPLETED if state == STATE_COMPLETED else State.IN_PROGRESS,
        owner_token=owner_token,
        created_at=created_at,
        expires_at=expires_at,
        completed_at=completed_at,
        response=response,
    )


def _load_response(reader: _Reader) -> StoredResponse:
    status = reader.u16()
    reason = reader.string()
    headers = tuple((reader.string(), reader.string()) for _ in range(reader.u32()))
    length = reader.u32()
    body = None if length == BODY_NOT_KEPT else reader.take(length)
    return StoredResponse(status=status, headers=headers, body=body, reason=reason)


def _str(value: str) -> bytes:
    encoded = value.encode()
    return _U32.pack(len(encoded)) + encoded


class _Reader:
    """A cursor over the bytes that turns every overrun into RecordFormatError."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def take(self, length: int) -> bytes:
        end = self.offset + length
        if end > len(self.data):
            raise RecordFormatError(
                f"Truncated record: needed {length} bytes at offset {self.offset}, "
                f"only {len(self.data) - self.offset} left."
            )
        chunk = bytes(self.data[self.offset : end])
        self.offset = end
        return chunk

    def header(self) -> tuple[int, int, int]:
        version, state, token_length = _HEADER.unpack(self.take(_HEADER.size))
        return int(version), int(state), int(token_length)

    def u16(self) -> int:
        return int(_U16.unpack(self.take(_U16.size))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(_U32.size))[0])

    def two_floats(self) -> tuple[float, float]:
        first, second = _TWO_F64.unpack(self.take(_TWO_F64.size))
        return float(first), float(second)

    def text(self, length: int) -> str:
        try:
            return self.take(length).decode()
        except UnicodeDecodeError as error:
            raise RecordFormatError(f"Invalid UTF-8 in a record: {error}") from error

    def string(self) -> str:
        return self.text(self.u32())

    def end(self) -> None:
        if self.offset != len(self.data):
            raise RecordFormatError(
                f"{len(self.data) - self.offset} unexpected bytes after the record."
            )
