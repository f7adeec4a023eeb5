"""Credentials out of every text that came from outside: the shape of a secret.

Error bodies from the platform (or from whatever answers on its address) are
copied into exception messages, which end in logs and on the command line. A
server that echoes the request's ``Authorization`` header would put our
bearer token there. :func:`scrub` replaces every credential-shaped part of
such a text; :func:`looks_secret` says whether a whole value has that shape
(the audit log's value check, :mod:`genesys_mux.observability.sanitize`).

A credential here is: the value after ``Bearer``/``Basic``; the value of an
``Authorization``, ``access_token``, ``client_secret`` or ``password``
field or header; a JWT; or a long run of base64 or URL-safe characters
mixing upper case, lower case and digits (an opaque OAuth token). Genesys
ids (UUIDs, ``streaming-0-…`` channel ids) and topics are lower case or
dotted and pass through. The check errs on the side of redacting: a false
positive costs a few characters of an error message, a false negative costs
a credential.

Shape is not enough for a secret a human chose (``correct-horse-battery-
staple-2024`` is all lower case): where the secrets in play are known (the
OAuth client secret, the tokens it was given), :func:`scrub` takes them as
``known`` and replaces them literally, whatever their shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MIN_KNOWN_SECRET_CHARS",
    "REDACTED",
    "URL_USERINFO_HINT",
    "looks_secret",
    "redact_url",
    "scrub",
    "scrub_urls",
    "url_has_userinfo",
    "userinfo_not_encoded",
]

REDACTED: Final = "[REDACTED]"

_AUTH_HEADER: Final = re.compile(r"(?:bearer|basic)\s+\S", re.I)
_AUTH_VALUE: Final = re.compile(r"\b((?:bearer|basic)\s+)[^\s\"',;}]+", re.I)
_SECRET_FIELD: Final = re.compile(
    r"((?:authorization|access_token|client_secret|password|secret)[\"']?\s*[:=]\s*[\"']?)"
    r"[^\"',;&}\s][^\"',;&}]*",
    re.I,
)
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# An opaque token: 24+ characters of base64 / base64url with no separators a
# human identifier would have (dots, spaces).
_OPAQUE_RUN: Final = re.compile(r"[A-Za-z0-9_\-+/=]{24,}")


def _opaque(text: str) -> bool:
    return (
        any(c.isupper() for c in text)
        and any(c.islower() for c in text)
        and any(c.isdigit() for c in text)
    )


def looks_secret(text: str) -> bool:
    """True when ``text`` has the shape of a credential (see the module notes)."""
    if _AUTH_HEADER.search(text) or _JWT.search(text):
        return True
    return any(_opaque(m.group()) for m in _OPAQUE_RUN.finditer(text))


#: Known values shorter than this are not replaced literally: they would cut
#: up ordinary words of the text and guard nothing.
MIN_KNOWN_SECRET_CHARS: Final = 4


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every credential-shaped part replaced by ``[REDACTED]``.

    ``known`` are the literal secrets in play (a client secret, its Basic
    credential, the access tokens): each is replaced wherever it occurs,
    whatever its shape, before the shape checks run. Longer values go
    first, so one that holds another is replaced whole.
    """
    values = {value for value in known if len(value) >= MIN_KNOWN_SECRET_CHARS}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    return _OPAQUE_RUN.sub(lambda m: REDACTED if _opaque(m.group()) else m.group(), text)


#: What to do about :func:`userinfo_not_encoded` (for the error that refuses the URL).
URL_USERINFO_HINT: Final = (
    "the user name or password in the url holds '/', '?' or '#' not percent-encoded, "
    "so the url cannot be read (a piece of the password would be taken for the host, port "
    "or path); percent-encode them (in Python urllib.parse.quote(password, safe=''): "
    "'/' is %2F, '?' %3F, '#' %23, '@' %40)"
)


def userinfo_not_encoded(url: str) -> bool:
    """True when ``url``'s user info holds ``/``, ``?`` or ``#`` not percent-encoded.

    Such a URL reads as something else (``redis://:ab#c@host`` is the host
    ``ab`` with a fragment), and the parsers then put a piece of the password
    where a host, port or path is expected, and so into error messages. It
    is told by an ``@`` after the first ``/``, ``?`` or ``#``, with a
    ``user:password``-like start before that delimiter (a colon not followed
    by a port number): an ``@`` in a path or query (``?notify=ops@example.com``)
    is not user info, and is left alone.
    """
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return False
    at = rest.rfind("@")
    if at < 0:
        return False
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if end > at:
        return False
    _, colon, tail = rest[:end].rpartition(":")
    return bool(colon) and not tail.isdigit()


def url_has_userinfo(url: str) -> bool:
    """True when ``url`` holds user info (``user:password@``), readable or not.

    Read from the text, not a parser: a URL that cannot be parsed
    (``http://u:pw@[::1``) or whose password holds a ``/``, ``?`` or ``#``
    not percent-encoded (see :func:`userinfo_not_encoded`) is told too.
    """
    if userinfo_not_encoded(url):
        return True
    rest = url.partition("://")[2]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return "@" in rest[:end]


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe for logs and errors.

    Never raises, whatever the text: user info that cannot be read (a ``/``,
    ``?`` or ``#`` not percent-encoded in the password) is cut at its last
    ``@``, a port that is not a number is left out, and a URL that cannot be
    parsed at all (``http://[::1``) is cut as text.
    """
    if userinfo_not_encoded(url):
        url = _redact_url_text(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL"
        return _redact_url_text(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# A URL in free text: a scheme, "://", then anything up to white space or a quote.
_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")


def _redact_url_text(text: str) -> str:
    """A URL's text without user info, query or fragment; never raises, whatever the text.

    The user info ends at the *last* ``@`` (a password may hold ``/``, ``?`` or
    ``#`` not percent-encoded), so it is cut before the query and fragment are.
    """
    scheme, _, rest = text.partition("://")
    rest = rest.rsplit("@", 1)[-1]
    for mark in ("?", "#"):
        rest = rest.split(mark, 1)[0]
    return f"{scheme}://{rest}"


def scrub_urls(text: str) -> str:
    """``text`` with every URL in it stripped of user info, query and fragment."""
    return _URL_IN_TEXT.sub(lambda m: _redact_url_text(m.group()), text)
