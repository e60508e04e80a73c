"""HMAC signing of what a bus sends, and the check of what it receives.

A signature is an HMAC-SHA256, under one named key, over a canonical
encoding of:

* the topic the message is published to, and the consumer group when the
  publish names one (a replayed dead letter), so that a signed message
  cannot be moved to another topic or group;
* every flowkit control header the message carries (each transport header
  whose name starts with ``flowkit-``, the signature itself aside), so that
  none can be added, removed or changed;
* the body, which holds the envelope: message id, correlation and causation
  ids, the envelope's headers (the idempotency key) and the payload.

It travels in the ``flowkit-signature`` header as ``key_id:hex``. A receiver
verifies with the key the header names only, so that old keys go on
verifying while the active one signs (key rotation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from typing import TYPE_CHECKING

from ._errors import DefinitionError, SignatureError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CONTROL_PREFIX",
    "ENV_PREFIX",
    "MIN_KEY_BYTES",
    "SIGNATURE",
    "Signing",
    "control_headers",
    "new_key",
]

#: The transport header carrying a message's signature, ``key_id:hex``.
SIGNATURE = "flowkit-signature"
#: Transport headers whose name starts with this are flowkit's control headers.
CONTROL_PREFIX = "flowkit-"
#: The shortest key accepted, in bytes (the output size of SHA-256).
MIN_KEY_BYTES = 32

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_HEX_DIGEST = 64
_DOMAIN = b"flowkit-signature/1"
# How much of a key id a message names is quoted in an error.
_QUOTED_ID = 40
# The most entries kept by each of a Signing's two caches (emptied when full),
# and the largest body whose verified signature is kept.
_CACHED = 512
_CACHED_BODY = 16 * 1024
#: The prefix of the environment variables :meth:`Signing.from_env` reads.
ENV_PREFIX = "FLOWKIT_SIGNING"
_NEW_KEY_FIX = "make a key with `flowkit signing new-key`"


def control_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The flowkit control headers among ``headers`` (the signature aside)."""
    return {
        name: value
        for name, value in headers.items()
        if name.startswith(CONTROL_PREFIX) and name != SIGNATURE
    }


def new_key(key_id: str) -> str:
    """A new random key of 32 bytes, as ``key_id:base64`` for ``FLOWKIT_SIGNING_KEYS``.

    Raises:
        DefinitionError: if ``key_id`` is not a short name.
    """
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise DefinitionError(
            f"key id {str(key_id)[:_QUOTED_ID]!r} is not a short name: use 1 to 32 letters, "
            "digits, '.', '_' or '-', starting with a letter or digit (such as '2026-12')"
        )
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(MIN_KEY_BYTES)).decode('ascii')}"


def _decode_key(text: str) -> bytes | None:
    """A key written in standard or URL-safe base64, padded or not; None if it is not."""
    text = text.strip().rstrip("=").replace("-", "+").replace("_", "/")
    if not text:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _env_keys(variable: str, text: str) -> dict[str, bytes]:
    """The keys of ``FLOWKIT_SIGNING_KEYS``, in their order; errors quote no key."""
    form = f"set {variable} to id:base64key[,id:base64key...] ({_NEW_KEY_FIX})"
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise DefinitionError(f"{variable} is set but holds no key: {form}, or unset it")
    keys: dict[str, bytes] = {}
    for number, entry in enumerate(entries, 1):
        where = f"entry {number} of {variable}"
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep:
            raise DefinitionError(f"{where} is not id:base64key: {form}")
        if not _KEY_ID.fullmatch(key_id):
            raise DefinitionError(
                f"{where} has no valid key id before its ':': use 1 to 32 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit (such as 2026-12), then "
                "':' and the key"
            )
        if key_id in keys:
            raise DefinitionError(
                f"{variable} names key id {key_id!r} twice: give each key its own id"
            )
        key = _decode_key(encoded)
        if key is None:
            raise DefinitionError(
                f"the key of {key_id!r} in {variable} is not base64 (standard or URL-safe): "
                f"{_NEW_KEY_FIX}"
            )
        if len(key) < MIN_KEY_BYTES:
            raise DefinitionError(
                f"the key of {key_id!r} in {variable} is too short ({len(key)} bytes): use "
                f"at least {MIN_KEY_BYTES} random bytes ({_NEW_KEY_FIX})"
            )
        keys[key_id] = key
    return keys


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _control(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The control headers a signature covers, sorted by name."""
    if not headers or (len(headers) == 1 and SIGNATURE in headers):
        return ()  # the most common case: nothing but the signature
    return tuple(
        sorted(
            (name, value)
            for name, value in headers.items()
            if name.startswith(CONTROL_PREFIX) and name != SIGNATURE
        )
    )


def _prefix(
    key_id: str, topic: str, group: str | None, control: tuple[tuple[str, str], ...]
) -> bytes:
    """The canonical encoding of everything a signature covers but the body."""
    parts = [
        _field(_DOMAIN),
        _field(key_id.encode()),
        _field(topic.encode()),
        b"\x00" if group is None else b"\x01" + _field(group.encode()),
        len(control).to_bytes(8, "big"),
    ]
    for name, value in control:
        parts.append(_field(name.encode()))
        parts.append(_field(value.encode()))
    return b"".join(parts)


class Signing:
    """HMAC-SHA256 signing of every message a bus sends, checked on receipt.

    With signing on, a consumer dead-letters (with a
    :class:`~flowkit.SignatureError`) every message that is unsigned, names a
    key it does not know, or whose signature does not match; the consumer
    carries on. Flowkit's own control headers (reply routing, request ids,
    deadlines, replay marks, idempotency keys) and the message id the inbox
    keys on are then trusted only when signed. See the security guide.

    Args:
        keys: the keys, by id: an id is a short name (letters, digits, ``.``,
            ``_`` and ``-``, at most 32 characters, such as ``"2026-12"``);
            a key is at least 32 random bytes. Every key verifies; keep an
            old one until nothing signed with it is left on the brokers or
            in the dead letters.
        active: the id of the key that signs.
        required: True refuses unsigned messages. False is a migration mode:
            unsigned messages are accepted with their control headers ignored
            (treated as absent), while signed ones are verified and refused
            if their signature does not match.

    Raises:
        DefinitionError: if a key id, a key, ``active`` or ``required`` is
            wrong (the message names which, never a key).
    """

    __slots__ = ("_active", "_keys", "_prefixes", "_required", "_verified")

    def __init__(self, keys: Mapping[str, bytes], *, active: str, required: bool = True) -> None:
        if not hasattr(keys, "items") or not keys:
            raise DefinitionError(
                "Signing(keys=...) takes a dict of key id to key bytes, such as "
                '{"2026-12": bytes.fromhex(os.environ["FLOWKIT_SIGNING_KEY"])}'
            )
        macs: dict[str, bytes] = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise DefinitionError(
                    f"Signing key id {str(key_id)[:_QUOTED_ID]!r} is not a short name: use "
                    "1 to 32 letters, digits, '.', '_' or '-', starting with a letter or "
                    "digit (such as '2026-12')"
                )
            if not isinstance(key, bytes | bytearray):
                raise DefinitionError(
                    f"Signing key {key_id!r} must be bytes, not {type(key).__name__}: decode "
                    "it from where it is kept, such as bytes.fromhex(os.environ[...])"
                )
            if len(key) < MIN_KEY_BYTES:
                raise DefinitionError(
                    f"Signing key {key_id!r} is too short ({len(key)} bytes): use at least "
                    f"{MIN_KEY_BYTES} random bytes, such as secrets.token_bytes(32)"
                )
            macs[key_id] = bytes(key)
        if not isinstance(active, str) or active not in macs:
            raise DefinitionError(
                f"Signing(active={str(active)[:_QUOTED_ID]!r}) names no key: the active key "
                f"signs, so it must be one of keys= ({', '.join(sorted(macs))})"
            )
        if not isinstance(required, bool):
            raise DefinitionError(
                f"Signing(required=...) must be True or False, not {type(required).__name__}"
            )
        self._keys = macs
        self._active = active
        self._required = required
        # The encoding of (key id, topic, group) with no control header: most messages.
        self._prefixes: dict[tuple[str, str, str | None], bytes] = {}
        # Signatures verified lately, with what they covered: the handlers of one
        # process that get the same message check it once.
        self._verified: dict[str, tuple[str, bytes, tuple[tuple[str, str], ...]]] = {}

    @classmethod
    def from_env(
        cls, prefix: str = ENV_PREFIX, *, environ: Mapping[str, str] | None = None
    ) -> Signing | None:
        """The signing the environment describes, or None when it describes none.

        It reads three variables (with the default ``prefix``):

        * ``FLOWKIT_SIGNING_KEYS``: the keys, as ``id:base64key`` entries parted
          by commas (``2026-12:q83v...,2026-06:3q2+...``), each key in standard
          or URL-safe base64 (``flowkit signing new-key`` makes one); unset,
          the environment describes no signing and None is returned;
        * ``FLOWKIT_SIGNING_ACTIVE``: the id of the key that signs (default:
          the first one);
        * ``FLOWKIT_SIGNING_REQUIRED``: ``1`` to refuse unsigned messages (the
          default), ``0`` for the migration mode.

        Args:
            prefix: the variables' common prefix.
            environ: where to read them (default: ``os.environ``).

        Returns:
            A :class:`Signing`, or None if ``{prefix}_KEYS`` is unset.

        Raises:
            DefinitionError: if a variable is wrong; the message names the
                variable and how to fix it, never a key.
        """
        env = os.environ if environ is None else environ
        keys_var, active_var, required_var = (
            f"{prefix}_KEYS",
            f"{prefix}_ACTIVE",
            f"{prefix}_REQUIRED",
        )
        text = env.get(keys_var)
        if text is None:
            return None
        keys = _env_keys(keys_var, text)
        active = (env.get(active_var) or "").strip() or next(iter(keys))
        if active not in keys:
            named = f"{active!r}" if _KEY_ID.fullmatch(active) else "no valid key id"
            raise DefinitionError(
                f"{active_var} names {named}, which is not a key id of {keys_var} "
                f"({', '.join(keys)}): set it to the id of the key that signs, or unset it "
                "to sign with the first"
            )
        flag = (env.get(required_var) or "").strip()
        if flag not in ("", "0", "1"):
            raise DefinitionError(
                f"{required_var} must be 1 (refuse unsigned messages, the default) or 0 "
                "(the migration mode: accept unsigned messages, their control headers "
                "ignored)"
            )
        return cls(keys, active=active, required=flag != "0")

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys that verify, sorted."""
        return tuple(sorted(self._keys))

    @property
    def active(self) -> str:
        """The id of the key that signs."""
        return self._active

    @property
    def required(self) -> bool:
        """Whether unsigned messages are refused (False: the migration mode)."""
        return self._required

    def _digest(
        self,
        key_id: str,
        topic: str,
        group: str | None,
        body: bytes,
        control: tuple[tuple[str, str], ...],
    ) -> bytes:
        if control:
            prefix = _prefix(key_id, topic, group, control)
        else:
            prefixes = self._prefixes
            cached = prefixes.get((key_id, topic, group))
            if cached is None:
                if len(prefixes) >= _CACHED:
                    prefixes.clear()
                cached = prefixes[(key_id, topic, group)] = _prefix(key_id, topic, group, ())
            prefix = cached
        message = prefix + len(body).to_bytes(8, "big") + body
        return hmac.digest(self._keys[key_id], message, hashlib.sha256).hex().encode()

    def sign(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        group: str | None = None,
    ) -> str:
        """The signature header value of a message, under the active key.

        Args:
            topic: the topic it is published to.
            body: its body.
            headers: the transport headers it carries (its control headers are signed).
            group: the consumer group it is published to, if only one.
        """
        digest = self._digest(self._active, topic, group, body, _control(headers))
        return f"{self._active}:{digest.decode()}"

    def signed(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        group: str | None = None,
    ) -> dict[str, str]:
        """``headers`` (without any signature they carried) with the signature added."""
        out = {k: v for k, v in headers.items() if k != SIGNATURE} if headers else {}
        out[SIGNATURE] = self.sign(topic, body, out, group=group)
        return out

    def verify(
        self, topic: str, group: str | None, body: bytes, headers: Mapping[str, str]
    ) -> bool:
        """Check a received message's signature.

        Args:
            topic: the topic it was received on.
            group: the consumer group that received it: a message signed for
                one group verifies in that group only.
            body: its body.
            headers: its transport headers.

        Returns:
            True if it is signed and the signature matches; False if it is
            unsigned and signatures are not required (its control headers
            are then not to be trusted).

        Raises:
            SignatureError: if it is unsigned and signatures are required, or
                names a key not known here, or its signature does not match.
        """
        given = headers.get(SIGNATURE)
        if given is None:
            if self._required:
                raise SignatureError(
                    f"unsigned message on topic {topic!r}: this bus requires a signature "
                    f"({SIGNATURE} header); sign it with the same keys (Choreography("
                    "signing=...)) or use Signing(required=False) while migrating"
                )
            return False
        key_id, sep, digest = given.partition(":")
        if not sep or len(digest) != _HEX_DIGEST:
            raise SignatureError(
                f"malformed {SIGNATURE} header on topic {topic!r}: expected key_id:hex"
            )
        if key_id not in self._keys:
            raise SignatureError(
                f"message on topic {topic!r} is signed with key id "
                f"{key_id[:_QUOTED_ID]!r}, which this bus does not know (it knows "
                f"{', '.join(self.key_ids)}); add that key to Signing(keys=...)"
            )
        control = _control(headers)
        seen = self._verified.get(given)
        if seen is not None and seen[0] == topic and seen[1] == body and seen[2] == control:
            return True  # verified before, for every group (never cached for one group)
        given_bytes = digest.encode()
        if hmac.compare_digest(self._digest(key_id, topic, None, body, control), given_bytes):
            if len(body) <= _CACHED_BODY:
                verified = self._verified
                if len(verified) >= _CACHED:
                    verified.clear()
                verified[given] = (topic, body, control)
            return True
        if group is not None and hmac.compare_digest(
            self._digest(key_id, topic, group, body, control), given_bytes
        ):
            return True
        raise SignatureError(
            f"bad signature (key {key_id!r}) on topic {topic!r}: the body, a flowkit "
            "header, the topic or the group differs from what was signed"
        )

    def __repr__(self) -> str:
        return (
            f"Signing(keys={list(self.key_ids)!r}, active={self._active!r}, "
            f"required={self._required})"
        )

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Signing holds secret keys and is not pickled; build it in each process")
