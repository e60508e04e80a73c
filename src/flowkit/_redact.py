"""Masking the secrets of URLs before they reach an error, a repr or a log.

Transports and stores are configured with URLs and DSNs that often carry a
password (``redis://:pw@host/0``, ``postgresql://user:pw@host/db``) or a token
in the query string (``?token=...``). Whatever shows such a URL to a person
passes it through :func:`redact_url` first.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redact_url", "scheme_of"]

#: What a secret is replaced with.
MASK = "***"

# A URL inside any text: a scheme, "://", then everything up to whitespace or a
# quote (so a URL inside an error message or a repr is found too).
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>[^\s'\"<>`]*)")

# Schemes whose user info, without a password, is a token (``nats://TOKEN@host``).
_TOKEN_SCHEMES = frozenset({"nats", "tls"})

# A query (or fragment) parameter whose name says it holds a secret.
_SECRET_PARAMETER = re.compile(
    r"(?P<name>[?&;#](?:[^=&;#]*?(?:pass|pwd|secret|token|key|credential|signature)"
    r"[^=&;#]*|sig))=(?P<value>[^&;#]*)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """``text`` with the secrets of every URL in it replaced by ``***``.

    Masked are the password of a URL's user info (``user:***@host``) and the
    values of query parameters whose names speak of a secret (``password``,
    ``passwd``, ``pwd``, ``secret``, ``token``, ``key``, ``credential``,
    ``signature``, ``sig``, in any case and as part of a longer name such as
    ``api_key`` or ``X-Amz-Signature``). A user name without a password is
    kept, except in a NATS URL (``nats://``, ``tls://``), where it is a token
    (``nats://***@host``). Text that holds no ``scheme://`` URL, a file path included, comes
    back unchanged. Redacting twice gives the same text as redacting once.

    When the user info holds a character a URL should have percent-encoded
    (``redis://:pa/ss@host``), the password is taken to run to the last
    ``@`` of the URL: more may be masked than needed, never less.

    Args:
        text: a URL, or any text that may contain URLs (an error message).

    Returns:
        The text with every secret masked.
    """
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    token = match["scheme"].lower() in _TOKEN_SCHEMES
    return f"{match['scheme']}://{_redact_rest(match['rest'], token=token)}"


def _redact_rest(rest: str, *, token: bool = False) -> str:
    """Mask the secrets of everything after ``scheme://``."""
    authority_end = len(rest)
    for separator in "/?#":
        found = rest.find(separator)
        if found != -1:
            authority_end = min(authority_end, found)
    at = rest.rfind("@", 0, authority_end)
    if at == -1:
        # No user info by the book; but an unencoded "/", "?" or "#" in a
        # password ends the authority early. An "@" after a ":" still marks one.
        later = rest.rfind("@")
        if later != -1 and ":" in rest[:later]:
            at = later
    if at != -1:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{MASK}{rest[at:]}"
        elif token and user and user != MASK:
            rest = f"{MASK}{rest[at:]}"
    return _SECRET_PARAMETER.sub(lambda m: f"{m['name']}={MASK}", rest)


def scheme_of(url: str, known: tuple[str, ...], kind: str) -> str:
    """The scheme of ``url`` (lower case), if it is one of ``known``.

    Args:
        url: the URL.
        known: the schemes accepted.
        kind: what the URL names, for the message (``"transport"``, ``"store"``).

    Raises:
        ValueError: naming the scheme (never the rest of the URL, which may
            hold a password) and the schemes flowkit knows.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in known:
        names = ", ".join(f"{name}://" for name in known)
        shown = f"{scheme}://" if sep else redact_url(url)
        raise ValueError(f"no {kind} for {shown!r}; flowkit knows {names}")
    return scheme
