"""Signing keys from the environment (``Signing.from_env``) and ``flowkit signing new-key``."""

from __future__ import annotations

import base64
import re

import pytest

from flowkit import DefinitionError, Signing
from flowkit.cli import main

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 140))
# Encodings that hold '+', '/' (standard) and '-', '_' (URL-safe) and padding.
STANDARD_B = base64.b64encode(KEY_B).decode()
URLSAFE_B = base64.urlsafe_b64encode(KEY_B).decode()
assert "+" in STANDARD_B or "/" in STANDARD_B


def env(keys: str | None, **more: str) -> dict[str, str]:
    out = dict(more)
    if keys is not None:
        out["FLOWKIT_SIGNING_KEYS"] = keys
    return out


def key_text(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_unset_keys_mean_no_signing() -> None:
    assert Signing.from_env(environ={}) is None
    # The other variables alone describe nothing.
    assert Signing.from_env(environ={"FLOWKIT_SIGNING_ACTIVE": "a"}) is None


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWKIT_SIGNING_KEYS", raising=False)
    assert Signing.from_env() is None
    monkeypatch.setenv("FLOWKIT_SIGNING_KEYS", f"a:{key_text(KEY_A)}")
    signing = Signing.from_env()
    assert signing is not None and signing.key_ids == ("a",)


def test_keys_active_and_required() -> None:
    signing = Signing.from_env(environ=env(f"2026-12:{key_text(KEY_A)}, 2026-06:{STANDARD_B}"))
    assert signing is not None
    assert signing.key_ids == ("2026-06", "2026-12")
    assert signing.active == "2026-12"  # the first one by default
    assert signing.required is True
    migrating = Signing.from_env(
        environ=env(
            f"a:{key_text(KEY_A)},b:{URLSAFE_B}",
            FLOWKIT_SIGNING_ACTIVE=" b ",
            FLOWKIT_SIGNING_REQUIRED="0",
        )
    )
    assert migrating is not None and migrating.active == "b" and migrating.required is False
    assert Signing.from_env(environ=env(f"a:{key_text(KEY_A)}", FLOWKIT_SIGNING_REQUIRED="1"))


def test_standard_and_urlsafe_base64_with_or_without_padding_give_the_same_key() -> None:
    body = b'{"n": 1}'
    expected = Signing({"k": KEY_B}, active="k").sign("T", body)
    for text in (STANDARD_B, URLSAFE_B, STANDARD_B.rstrip("="), URLSAFE_B.rstrip("=")):
        signing = Signing.from_env(environ=env(f"k:{text}"))
        assert signing is not None and signing.sign("T", body) == expected


def test_another_prefix() -> None:
    environ = {"BILLING_KEYS": f"x:{key_text(KEY_A)}", "BILLING_REQUIRED": "0"}
    signing = Signing.from_env("BILLING", environ=environ)
    assert signing is not None and signing.key_ids == ("x",) and not signing.required
    assert Signing.from_env(environ=environ) is None


SECRET = key_text(KEY_A)


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        (env(""), r"FLOWKIT_SIGNING_KEYS is set but holds no key: .*new-key.*or unset it"),
        (env(" , "), r"FLOWKIT_SIGNING_KEYS is set but holds no key"),
        (env(SECRET), r"entry 1 of FLOWKIT_SIGNING_KEYS is not id:base64key: set"),
        (env(f"a:{SECRET},{SECRET}"), r"entry 2 of FLOWKIT_SIGNING_KEYS is not id:base64key"),
        (env(f"{SECRET}:a"), r"entry 1 of FLOWKIT_SIGNING_KEYS has no valid key id"),
        (env(f"a b:{SECRET}"), r"entry 1 of FLOWKIT_SIGNING_KEYS has no valid key id"),
        (env(f"a:{SECRET},a:{SECRET}"), r"names key id 'a' twice"),
        (env(f"a:{SECRET}!"), r"the key of 'a' in FLOWKIT_SIGNING_KEYS is not base64 .*new-key"),
        (env("a:"), r"the key of 'a' in FLOWKIT_SIGNING_KEYS is not base64"),
        (
            env(f"a:{key_text(KEY_A[:16])}"),
            r"the key of 'a' in FLOWKIT_SIGNING_KEYS is too short \(16 bytes\): use at least 32",
        ),
        (
            env(f"a:{SECRET},b:{STANDARD_B}", FLOWKIT_SIGNING_ACTIVE="c"),
            r"FLOWKIT_SIGNING_ACTIVE names 'c', which is not a key id of FLOWKIT_SIGNING_KEYS "
            r"\(a, b\)",
        ),
        (
            env(f"a:{SECRET}", FLOWKIT_SIGNING_ACTIVE=SECRET),
            r"FLOWKIT_SIGNING_ACTIVE names no valid key id",
        ),
        (
            env(f"a:{SECRET}", FLOWKIT_SIGNING_REQUIRED="yes"),
            r"FLOWKIT_SIGNING_REQUIRED must be 1 .* or 0",
        ),
        (
            env(f"a:{SECRET}", FLOWKIT_SIGNING_REQUIRED=SECRET),
            r"FLOWKIT_SIGNING_REQUIRED must be 1",
        ),
    ],
)
def test_errors_name_the_variable_and_never_a_key(environ: dict[str, str], says: str) -> None:
    with pytest.raises(DefinitionError, match=says) as caught:
        Signing.from_env(environ=environ)
    message = str(caught.value)
    for secret in (SECRET, SECRET.rstrip("="), STANDARD_B, SECRET[:20]):
        assert secret not in message
    assert repr(KEY_A) not in message and KEY_A.hex() not in message


# -- flowkit signing new-key -----------------------------------------------------------------


def test_new_key_round_trips_through_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["signing", "new-key", "--id", "2026-12"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["signing", "new-key", "--id", "2026-06"]) == 0
    second = capsys.readouterr().out.strip()
    key_id, _, text = first.partition(":")
    assert key_id == "2026-12"
    assert len(base64.b64decode(text, validate=True)) == 32
    assert first != second and text != second.partition(":")[2]  # random each time
    signing = Signing.from_env(environ=env(f"{first},{second}"))
    assert signing is not None
    assert signing.key_ids == ("2026-06", "2026-12") and signing.active == "2026-12"
    # It signs with the printed key.
    expected = Signing({"2026-12": base64.b64decode(text)}, active="2026-12")
    assert signing.sign("T", b"body") == expected.sign("T", b"body")


def test_new_key_defaults_to_this_month_and_checks_the_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["signing", "new-key"]) == 0
    assert re.fullmatch(r"\d{4}-\d{2}:[A-Za-z0-9+/]{43}=\n", capsys.readouterr().out)
    assert main(["signing", "new-key", "--id", "not an id"]) == 2
    err = capsys.readouterr().err
    assert "--id" in err and "not a short name" in err and len(err.strip().splitlines()) == 1
