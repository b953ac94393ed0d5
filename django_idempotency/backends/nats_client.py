"""Connections to NATS JetStream for NatsBackend: options, the bucket, and its few operations.

Kept apart from the contract class (:mod:`~django_idempotency.backends.nats`)
as :mod:`~django_idempotency.backends.redis_client` is from ``redis``. The
records live in a JetStream key-value bucket, but the operations are spoken
one level down, on the bucket's stream, because that is where the atomic
and fenced forms are:

* **put-if-last**: a publish to ``$KV.<bucket>.<key>`` with
  ``Nats-Expected-Last-Subject-Sequence``: 0 writes only if the key holds
  nothing (a claim); a revision writes only if that revision is still the
  key's last message (a takeover, a renewal, a completion). JetStream refuses
  anything else with error 10071, whatever happened in between.
* **get**: the key's last message (a direct get when the bucket allows it).
* **create-or-read**: a put-if-absent, and the key's get when it is
  refused; with ``READ_ON_CLAIM`` the get is sent beside the put, in the
  same round trip.
* **purge-up-to**: the JetStream purge API, filtered on the key's subject
  and bounded by a sequence, removes the key's messages older than that
  sequence and never a newer one: a fenced delete that leaves no marker.

nats-py is asyncio only: every operation is a coroutine, run by the async
methods on their own loop's client and by the sync methods on the process's
loop thread (:mod:`~django_idempotency.backends.loop_clients`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from django_idempotency.backends.changes import Listen
from django_idempotency.backends.extras import missing_extra
from django_idempotency.backends.serialization import STATE_COMPLETED

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NatsConnection
    from nats.js import JetStreamContext, api
except ImportError as error:  # an optional extra: say how to install it
    raise missing_extra("NatsBackend", "nats-py", "nats", error) from error

logger = logging.getLogger("django_idempotency")

DEFAULT_SERVERS = ("nats://127.0.0.1:4222",)
DEFAULT_BUCKET = "idempotency"
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 2.0
OPTIONS = frozenset(
    {
        "SERVERS",
        "BUCKET",
        "USER",
        "PASSWORD",
        "TOKEN",
        "CREDENTIALS",
        "NKEYS_SEED",
        "TLS_CA",
        "TLS_CERT",
        "TLS_KEY",
        "CONNECT_TIMEOUT",
        "TIMEOUT",
        "REPLICAS",
        "MAX_AGE",
        "MAX_VALUE_SIZE",
        "READ_ON_CLAIM",
    }
)
BUCKET_NAME = re.compile(r"[a-zA-Z0-9_-]+")
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""JetStream's error codes for a publish whose expected last sequence did not match."""
MESSAGE_TTL_SERVER = (2, 11)
"""The first nats-server version that forgets a message after its own TTL."""
LISTEN_POLL = 1.0
"""Seconds a change listener sleeps between looks at ``stop``."""


class Conflict(Exception):
    """A fenced write found another last message: the key is not what the writer saw."""


@dataclass(frozen=True)
class Message:
    """A key's last message: its value and revision (the stream sequence)."""

    value: bytes
    revision: int


@dataclass(frozen=True)
class NatsOptions:
    """The validated OPTIONS of NatsBackend."""

    servers: tuple[str, ...]
    bucket: str
    connect: Mapping[str, Any]
    """Keyword arguments of ``nats.connect`` beyond the servers."""
    timeout: float
    replicas: int
    max_age: float
    max_value_size: int | None
    read_on_claim: bool
    """Whether a claim sends the key's read beside its create (a replay in one round trip)."""

    @property
    def stream(self) -> str:
        return f"KV_{self.bucket}"

    def subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"


def parse_options(options: Mapping[str, Any]) -> NatsOptions:
    """OPTIONS validated, or ImproperlyConfigured naming the option and the fix."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        names = ", ".join(f"IDEMPOTENCY['OPTIONS'][{name!r}]" for name in unknown)
        raise ImproperlyConfigured(
            f"Unknown option(s) for NatsBackend: {names}; allowed: {', '.join(sorted(OPTIONS))}."
        )
    servers = options.get("SERVERS", DEFAULT_SERVERS)
    if isinstance(servers, str):
        servers = (servers,)
    if (
        not isinstance(servers, (list, tuple))
        or not servers
        or not all(isinstance(server, str) and server for server in servers)
    ):
        raise ImproperlyConfigured(
            "IDEMPOTENCY['OPTIONS']['SERVERS'] must be a NATS URL or a list of them, such as "
            f"'nats://127.0.0.1:4222'; got {servers!r}."
        )
    bucket = options.get("BUCKET", DEFAULT_BUCKET)
    if not isinstance(bucket, str) or not BUCKET_NAME.fullmatch(bucket):
        raise ImproperlyConfigured(
            "IDEMPOTENCY['OPTIONS']['BUCKET'] must be a bucket name of letters, digits, '-' "
            f"and '_'; got {bucket!r}."
        )
    connect: dict[str, Any] = {
        "connect_timeout": _seconds(options, "CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "name": "django-idempotency",
    }
    for option, argument in (
        ("USER", "user"),
        ("PASSWORD", "password"),
        ("TOKEN", "token"),
        ("CREDENTIALS", "user_credentials"),
        ("NKEYS_SEED", "nkeys_seed"),
    ):
        if option in options:
            connect[argument] = _string(options, option)
    tls = _tls(options)
    if tls is not None:
        connect["tls"] = tls
    return NatsOptions(
        servers=tuple(servers),
        bucket=bucket,
        connect=connect,
        timeout=_seconds(options, "TIMEOUT", DEFAULT_TIMEOUT),
        replicas=_positive_int(options, "REPLICAS", 1),
        max_age=_seconds(options, "MAX_AGE", 0, allow_zero=True),
        max_value_size=_positive_int(options, "MAX_VALUE_SIZE", None),
        read_on_claim=_flag(options, "READ_ON_CLAIM"),
    )


def _string(options: Mapping[str, Any], name: str) -> str:
    value = options[name]
    if not isinstance(value, str) or not value:
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['OPTIONS'][{name!r}] must be a non-empty string; got {value!r}."
        )
    return value


def _seconds(
    options: Mapping[str, Any], name: str, default: float, allow_zero: bool = False
) -> float:
    value = options.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        least = "0 or more" if allow_zero else "a positive number of"
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['OPTIONS'][{name!r}] must be {least} seconds; got {value!r}."
        )
    return float(value)


def _flag(options: Mapping[str, Any], name: str) -> bool:
    value = options.get(name, False)
    if not isinstance(value, bool):
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['OPTIONS'][{name!r}] must be True or False; got {value!r}."
        )
    return value


def _positive_int(options: Mapping[str, Any], name: str, default: int | None) -> Any:
    value = options.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(
            f"IDEMPOTENCY['OPTIONS'][{name!r}] must be a positive integer; got {value!r}."
        )
    return value


def _tls(options: Mapping[str, Any]) -> Any:
    """An SSL context from TLS_CA / TLS_CERT / TLS_KEY, or None for plain TCP."""
    if not any(name in options for name in ("TLS_CA", "TLS_CERT", "TLS_KEY")):
        return None
    import ssl

    context = ssl.create_default_context(
        cafile=_string(options, "TLS_CA") if "TLS_CA" in options else None
    )
    if "TLS_CERT" in options:
        key = _string(options, "TLS_KEY") if "TLS_KEY" in options else None
        context.load_cert_chain(_string(options, "TLS_CERT"), key)
    return context


def driver_errors() -> tuple[type[BaseException], ...]:
    """What nats-py raises when NATS fails: each becomes a StorageError."""
    return (nats.errors.Error, OSError, asyncio.TimeoutError, TimeoutError)


def server_version(connection: NatsConnection) -> tuple[int, int]:
    """The connected server's version, (major, minor)."""
    version = connection.connected_server_version
    return (version.major, version.minor)


@dataclass
class Bucket:
    """The bucket as this client sees it: the stream to speak to, and how."""

    options: NatsOptions
    connection: NatsConnection
    js: JetStreamContext
    direct: bool
    message_ttl: bool
    """Whether messages carry their own TTL (nats-server 2.11+, a stream that allows it)."""

    # -- the operations --------------------------------------------------------

    async def create_or_read(
        self, key: str, value: bytes, *, ttl: float | None = None
    ) -> tuple[int, None] | tuple[None, Message | None]:
        """Create the key holding ``value``, or read what it holds.

        ``(revision, None)`` when the key was created, ``(None, message)`` when
        it already held one (``message`` None if it was gone again by the read).
        JetStream has no create-or-get: a refused put-if-absent says nothing of
        the value, so a replay costs the put and a get. With ``READ_ON_CLAIM``
        both go at once (:meth:`create_and_read`), otherwise the get only
        follows a refused put, and a first execution never sends it.
        """
        if self.options.read_on_claim:
            return await self.create_and_read(key, value, ttl=ttl)
        try:
            return await self.put(key, value, last=0, ttl=ttl), None
        except Conflict:
            return None, await self.get(key)

    async def create_and_read(
        self, key: str, value: bytes, *, ttl: float | None = None
    ) -> tuple[int, None] | tuple[None, Message | None]:
        """:meth:`create_or_read` in one round trip: the get is sent beside the put.

        Either order of the two on the server gives a valid answer: a get run
        before the put saw the key as it was during this claim, and a created
        key always wins over the get. The price is a get that every first
        execution sends and does not need.
        """
        created, read = await asyncio.gather(
            self._put(key, value, last=0, ttl=ttl), self._get(key), return_exceptions=True
        )
        if isinstance(created, int):
            return created, None
        if not isinstance(created, Conflict):
            raise created
        if isinstance(read, BaseException):
            raise read
        return None, read

    async def put(self, key: str, value: bytes, *, last: int, ttl: float | None = None) -> int:
        """Write ``value`` only if ``last`` is the key's last revision (0: none); the new one.

        Raises :class:`Conflict` when it is not. ``ttl`` is the message's own
        lifetime, used where the server keeps it.
        """
        return await self._put(key, value, last=last, ttl=ttl)

    async def get(self, key: str) -> Message | None:
        """The key's last message, or None when it holds nothing."""
        return await self._get(key)

    async def _put(self, key: str, value: bytes, *, last: int, ttl: float | None) -> int:
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
        try:
            ack = await self.js.publish(
                self.options.subject(key),
                value,
                timeout=self.options.timeout,
                headers=headers,
                msg_ttl=ttl if self.message_ttl else None,
            )
        except nats.js.errors.APIError as error:
            if error.err_code in WRONG_LAST_SEQUENCE:
                raise Conflict(str(error)) from None
            raise
        return int(ack.seq)

    async def _get(self, key: str) -> Message | None:
        try:
            message = await self.js.get_msg(
                self.options.stream, subject=self.options.subject(key), direct=self.direct
            )
        except (nats.js.errors.NotFoundError, nats.js.errors.KeyNotFoundError):
            return None
        if not message.data:  # a delete or purge marker (none are written, but a person may)
            return None
        return Message(value=bytes(message.data), revision=int(message.seq or 0))

    async def purge(self, key: str, *, before: int | None = None) -> int:
        """Remove the key's messages (those older than revision ``before``); how many went."""
        request: dict[str, Any] = {"filter": self.options.subject(key)}
        if before is not None:
            request["seq"] = before
        reply = await self.connection.request(
            f"$JS.API.STREAM.PURGE.{self.options.stream}",
            json.dumps(request).encode(),
            timeout=self.options.timeout,
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises it
        return int(answer.get("purged", 0))

    async def keys(self) -> list[str]:
        """Every key holding a message, sorted."""
        info = await self.js.stream_info(
            self.options.stream, subjects_filter=f"$KV.{self.options.bucket}.>"
        )
        prefix = f"$KV.{self.options.bucket}."
        subjects = info.state.subjects or {}
        return sorted(subject[len(prefix) :] for subject in subjects)


def released_subject(options: NatsOptions) -> str:
    """The core NATS subject a release is announced on (a purge leaves no message to hear)."""
    return f"_IDEMPOTENCY.{options.bucket}.released"


def change_listener(options: NatsOptions) -> Listen:
    """The loop of a :class:`~django_idempotency.backends.changes.ChangeListener` over NATS.

    Core NATS delivers every message published to the bucket's subjects to
    plain subscribers too: a completed record (its state byte says so) wakes
    the waiters of its key, and so does a release, announced apart. The loop
    runs its own event loop and connection, in the listener's thread.
    """

    def listen(
        ready: Callable[[], None], deliver: Callable[[str], None], stop: threading.Event
    ) -> None:
        asyncio.run(_listen(options, ready, deliver, stop))

    return listen


async def _listen(
    options: NatsOptions,
    ready: Callable[[], None],
    deliver: Callable[[str], None],
    stop: threading.Event,
) -> None:
    prefix = f"$KV.{options.bucket}."
    connection = await connect(options)

    async def on_record(message: Any) -> None:
        data = message.data
        if len(data) > 1 and data[1] == STATE_COMPLETED:
            deliver(message.subject[len(prefix) :])

    async def on_release(message: Any) -> None:
        deliver(message.data.decode())

    try:
        await connection.subscribe(f"{prefix}*", cb=on_record)
        await connection.subscribe(released_subject(options), cb=on_release)
        await connection.flush(timeout=math.ceil(options.timeout))  # subscribed, confirmed
        ready()
        while not stop.is_set() and not connection.is_closed:
            await asyncio.sleep(LISTEN_POLL)
        if connection.is_closed:
            raise ConnectionError("the NATS connection closed")
    finally:
        await connection.close()


async def connect(options: NatsOptions) -> NatsConnection:
    """A connection to the first server that answers, within each server's connect timeout.

    nats-py retries a first connection as long as it reconnects later
    (forever here), so the wait is bounded by hand: a request meets an
    unreachable NATS as a storage error, not as a hang.
    """
    timeout = options.connect["connect_timeout"] * len(options.servers) + 1
    return await asyncio.wait_for(
        nats.connect(servers=list(options.servers), error_cb=_quiet, **options.connect),
        timeout,
    )


async def _quiet(error: Exception) -> None:
    """nats-py's errors while it (re)connects: the operations that fail say so themselves."""
    logger.debug("idempotency: NATS connection error: %s", error)


async def open_bucket(options: NatsOptions, connection: NatsConnection) -> Bucket:
    """The bucket, created with this app's settings if it does not exist yet."""
    js = connection.jetstream(timeout=options.timeout)
    try:
        info = await js.stream_info(options.stream)
    except nats.js.errors.NotFoundError:
        info = await _create_bucket(options, js)
    supports_ttl = server_version(connection) >= MESSAGE_TTL_SERVER
    return Bucket(
        options=options,
        connection=connection,
        js=js,
        direct=bool(info.config.allow_direct),
        message_ttl=supports_ttl and bool(info.config.allow_msg_ttl),
    )


async def _create_bucket(options: NatsOptions, js: JetStreamContext) -> api.StreamInfo:
    """history 1, direct gets, per-message TTL (honoured from 2.11), max age and value size."""
    # BadRequestError: another worker created it at the same moment.
    with suppress(nats.js.errors.BadRequestError):
        await js.create_key_value(
            bucket=options.bucket,
            history=1,
            direct=True,
            replicas=options.replicas,
            ttl=options.max_age or None,
            max_value_size=options.max_value_size,
        )
    return await js.stream_info(options.stream)


async def bucket_problems(options: NatsOptions, js: JetStreamContext, longest: float) -> list[str]:
    """What makes an existing bucket unsuitable; ``longest`` is the longest TTL or lease."""
    try:
        info = await js.stream_info(options.stream)
    except nats.js.errors.NotFoundError:
        return []  # created with suitable settings on first use
    config = info.config
    problems = []
    max_age = float(config.max_age or 0)
    if max_age and max_age < longest:
        problems.append(
            f"its max age ({max_age:g} s) is shorter than the longest TTL or LOCK_TTL "
            f"({longest:g} s): records would vanish while they must still be replayed"
        )
    if (config.max_msgs_per_subject or 0) != 1:
        problems.append(
            f"it keeps {config.max_msgs_per_subject} revisions per key (history); one is enough"
        )
    if config.deny_purge:
        problems.append("it denies purges, which release claims and remove dead records")
    return problems
