"""Looking at and removing NATS buckets from tests, apart from the backend under test."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import nats
import nats.js.errors


def delete_bucket(url: str, bucket: str) -> None:
    """Delete the bucket (its stream); nothing if it does not exist."""

    async def delete() -> None:
        connection = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            with suppress(nats.js.errors.NotFoundError):
                await connection.jetstream().delete_key_value(bucket)
        finally:
            await connection.close()

    asyncio.run(delete())


def stream_config(url: str, bucket: str) -> Any:
    """The bucket's stream configuration, as the server reports it."""

    async def config() -> Any:
        connection = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            info = await connection.jetstream().stream_info(f"KV_{bucket}")
            return info.config
        finally:
            await connection.close()

    return asyncio.run(config())
