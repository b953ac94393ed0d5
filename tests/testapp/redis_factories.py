"""A django-redis connection factory that decodes replies, as a custom one might.

The ``decode_responses`` a cache's settings show is refused when RedisBackend
is built; one added by code like this is only seen when a reply does not
decode, which must then be a storage error, never a 500.
"""

from __future__ import annotations

from typing import Any

from django_redis.pool import ConnectionFactory


class DecodingConnectionFactory(ConnectionFactory):
    """Builds pools whose connections decode every reply as UTF-8 text."""

    def make_connection_params(self, url: str) -> dict[str, Any]:
        params: dict[str, Any] = super().make_connection_params(url)
        params["decode_responses"] = True
        return params
