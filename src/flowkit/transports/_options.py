"""A broker transport's own options in its URL's query string.

The command line takes a URL and nothing else, so every broker transport
reads its options from the URL too (``redis://host/0?claim_idle=5&prefix=shop``);
given there, they take precedence over the keyword arguments. The rest of the
query is the client library's (what each transport does with it is its own:
passed on, or refused). :func:`split_options` takes the transport's options
out of the URL, and :class:`URLOptions` reads them, with one error for a value
that is not a number, which never shows the URL's password.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._redact import redact_url

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["URLOptions", "split_options"]


def split_options(
    url: str, names: Collection[str]
) -> tuple[str, URLOptions, list[tuple[str, str]]]:
    """Take the transport's own options out of a URL's query string.

    ``redis://host/0?claim_idle=5&socket_keepalive=true`` gives
    ``redis://host/0?socket_keepalive=true``, the option ``claim_idle``, and
    the parameter ``socket_keepalive``.

    Args:
        url: the URL as given.
        names: the transport's own options.

    Returns:
        The URL without those options (as given, if it has none of them), the
        options, and the query's other parameters in their order.
    """
    options = URLOptions(redact_url(url))
    parts = urlsplit(url)
    if not parts.query:
        return url, options, []
    others: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in names:
            options.given[name] = value
        else:
            others.append((name, value))
    if not options.given:
        return url, options, others
    return urlunsplit(parts._replace(query=urlencode(others))), options, others


class URLOptions:
    """The transport options a URL gives, each over the keyword argument's value.

    Attributes:
        given: the options as written in the URL.
    """

    __slots__ = ("_where", "given")

    def __init__(self, where: str) -> None:
        self._where = where
        self.given: dict[str, str] = {}

    def text(self, name: str, default: str) -> str:
        """The option ``name`` as written, else ``default``."""
        return self.given.get(name, default)

    def integer(self, name: str, default: int) -> int:
        """The option ``name``, else ``default``, as an ``int``.

        Raises:
            ValueError: if it is not a whole number.
        """
        try:
            return int(self.given.get(name, default))
        except ValueError as exc:
            raise self._not_a_number(exc) from None

    def number(self, name: str, default: float) -> float:
        """The option ``name``, else ``default``, as a ``float`` (seconds, mostly).

        Raises:
            ValueError: if it is not a number.
        """
        try:
            return float(self.given.get(name, default))
        except ValueError as exc:
            raise self._not_a_number(exc) from None

    def limit(self, name: str, default: int | None) -> int | None:
        """The option ``name`` as an ``int``, or None where the URL gives it empty
        (``max_len=``); ``default`` if the URL does not give it.

        Raises:
            ValueError: if it is neither empty nor a whole number.
        """
        if name not in self.given:
            return default
        value = self.given[name]
        try:
            return int(value) if value else None
        except ValueError as exc:
            raise self._not_a_number(exc) from None

    def _not_a_number(self, exc: ValueError) -> ValueError:
        return ValueError(f"a transport option in {self._where!r} is not a number: {exc}")
