"""Who may use the dashboard: the login token, its cookie, and the CSRF token of
the forms that change something."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

__all__ = ["COOKIE", "CSRF_FIELD", "CSRF_HEADER", "Guard", "is_loopback"]

COOKIE = "flowkit_ui"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """The secrets of one running dashboard.

    Args:
        token: the token the login page asks for; None lets everyone in (the
            dashboard is then bound to this machine only).
    """

    def __init__(self, token: str | None) -> None:
        if token is not None and len(token) < 8:
            raise ValueError("the dashboard token must be at least 8 characters long")
        self._token = token
        self._key = secrets.token_bytes(32)
        self.csrf = secrets.token_urlsafe(32)

    @property
    def required(self) -> bool:
        """Whether a login is needed."""
        return self._token is not None

    def check_token(self, given: str) -> bool:
        """Whether ``given`` is the token (compared in constant time)."""
        if self._token is None:
            return True
        return hmac.compare_digest(given.encode(), self._token.encode())

    def session(self) -> str:
        """The cookie value proving a login to this process."""
        return hmac.new(self._key, b"session", hashlib.sha256).hexdigest()

    def check_session(self, cookie: str | None) -> bool:
        """Whether a request's cookie proves a login (always, without a token)."""
        if self._token is None:
            return True
        return cookie is not None and hmac.compare_digest(cookie, self.session())

    def check_csrf(self, given: str | None) -> bool:
        """Whether a form or request carries this page's CSRF token."""
        return given is not None and hmac.compare_digest(given, self.csrf)
