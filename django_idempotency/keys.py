"""Reading the ``Idempotency-Key`` header and turning it into a storage key.

The IETF draft defines the header as an RFC 8941 sf-string, so ``"abc"`` and
``abc`` are the same key. A repeated header reaches Django joined with a
comma (both WSGI servers and Django's ASGI handler do that), which is why an
unquoted value with a comma, or anything after a closing quote, is rejected:
the request carried two keys and we cannot know which one the client meant.
"""

from __future__ import annotations

import hashlib


class InvalidKey(Exception):
    """The header is present but unusable; ``reason`` is shown to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_key(raw: str, max_length: int) -> str:
    """The key carried by a header value, or :class:`InvalidKey`.

    Accepts a bare token or an RFC 8941 sf-string (``"..."`` with ``\\"`` and
    ``\\\\`` escapes). The key must be 1..``max_length`` printable ASCII
    characters.
    """
    value = raw.strip(" \t")
    if value.startswith('"'):
        key = _parse_sf_string(value)
    else:
        if "," in value:
            raise InvalidKey(
                "The header was sent more than once, or holds a list; send exactly one key "
                '(quote it as "..." if it contains a comma).'
            )
        key = value
    if not key:
        raise InvalidKey("The key is empty.")
    if len(key) > max_length:
        raise InvalidKey(f"The key is {len(key)} characters long; the limit is {max_length}.")
    if not (key.isascii() and key.isprintable()):  # exactly 0x20 to 0x7E
        raise InvalidKey("The key must be printable ASCII (characters 0x20 to 0x7E).")
    return key


def _parse_sf_string(value: str) -> str:
    """Unquote an RFC 8941 sf-string that must be the whole header value."""
    chars: list[str] = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == "\\":
            following = value[index + 1 : index + 2]
            if following not in ('"', "\\"):
                raise InvalidKey('Only \\" and \\\\ may be escaped in a quoted key.')
            chars.append(following)
            index += 2
            continue
        if char == '"':
            if value[index + 1 :].strip(" \t"):
                raise InvalidKey(
                    "The header was sent more than once, or holds more than one value; "
                    "send exactly one key."
                )
            return "".join(chars)
        chars.append(char)
        index += 1
    raise InvalidKey("The quoted key has no closing quote.")


def storage_key(scope: str, key: str) -> str:
    """The fixed-length name a (scope, key) pair is stored under.

    A hash keeps every store's key short and uniform (index-friendly, safe in
    Redis and memcached) and never confuses ``("a:b", "c")`` with
    ``("a", "b:c")``: a key is printable ASCII, so it holds no NUL.
    """
    return hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()


def log_label(storage_key: str) -> str:
    """What log lines name a record by: never the raw key, a short hash."""
    return storage_key[:12]
