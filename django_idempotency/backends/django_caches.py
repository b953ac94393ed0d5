"""What an alias of ``settings.CACHES`` configures, read without building the cache.

Both :mod:`~django_idempotency.backends.cache` and
:mod:`~django_idempotency.backends.redis` need to know whether an alias is a
django-redis cache (whose connection pool Redis commands can use); neither
owns the answer, so it lives here.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.core.cache import BaseCache
from django.utils.module_loading import import_string


def configured_cache_class(alias: str) -> type[BaseCache] | None:
    """The BACKEND class of ``settings.CACHES[alias]``, or None if it cannot be imported."""
    config = settings.CACHES.get(alias)
    if not isinstance(config, Mapping):
        return None
    try:
        cache_class = import_string(config.get("BACKEND", ""))
    except ImportError:
        return None
    if isinstance(cache_class, type) and issubclass(cache_class, BaseCache):
        return cache_class
    return None


def is_django_redis(cache_class: type[BaseCache]) -> bool:
    """Whether the cache is django-redis's (whose raw client Redis commands can use)."""
    try:
        from django_redis.cache import RedisCache
    except ImportError:
        return False
    return issubclass(cache_class, RedisCache)


def is_single_redis(alias: str) -> bool:
    """A django-redis cache whose keys live on one Redis (not sharded across several).

    Only there does one connection see every key: a Lua script can check a
    record's owner and a SCAN can list every record.
    """
    cache_class = configured_cache_class(alias)
    if cache_class is None or not is_django_redis(cache_class):
        return False
    from django_redis.client import ShardClient

    client_path = settings.CACHES[alias].get("OPTIONS", {}).get("CLIENT_CLASS", "")
    if not client_path:
        return True
    try:
        client_class = import_string(client_path)
    except ImportError:
        return False
    return not (isinstance(client_class, type) and issubclass(client_class, ShardClient))
