"""One-time codes: generation, keyed digests, sealing bound to a sid, and routing tags."""

from __future__ import annotations

import base64
import re

import pytest

from ivr.verification.codes import CodeSecrets, SealError, derive_key, generate_code
from ivr.verification.models import bucket_of, number_id_of
from tests.conftest import SECRET_KEY

SID = "VE" + "0" * 32
OTHER_SID = "VE" + "1" * 32


@pytest.fixture
def code_secrets():
    return CodeSecrets(SECRET_KEY.encode())


@pytest.fixture
def other_secrets():
    return CodeSecrets(b"another-secret-key-" + b"y" * 32)


# Generating codes


@pytest.mark.parametrize("length", [6, 7, 8, 10])
def test_a_code_has_the_requested_length_and_only_digits(length):
    for _ in range(200):
        code = generate_code(length)
        assert len(code) == length
        assert re.fullmatch(r"[0-9]+", code)


def test_a_code_keeps_its_leading_zeros():
    codes = [generate_code(6) for _ in range(2000)]
    assert all(len(code) == 6 for code in codes)
    assert any(code.startswith("0") for code in codes)


def test_every_digit_appears_in_every_position():
    codes = [generate_code(6) for _ in range(2000)]
    for position in range(6):
        assert {code[position] for code in codes} == set("0123456789"), position


# Digests


def test_the_digest_is_deterministic_for_one_key(code_secrets):
    again = CodeSecrets(SECRET_KEY.encode())
    assert code_secrets.digest("123456") == code_secrets.digest("123456")
    assert code_secrets.digest("123456") == again.digest("123456")


def test_the_digest_is_base64url_and_does_not_contain_the_code(code_secrets):
    digest = code_secrets.digest("123456")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", digest)
    assert "123456" not in digest


def test_the_digest_differs_between_codes(code_secrets):
    assert code_secrets.digest("123456") != code_secrets.digest("123457")
    assert code_secrets.digest("012345") != code_secrets.digest("12345")


def test_the_digest_differs_between_keys(code_secrets, other_secrets):
    assert code_secrets.digest("123456") != other_secrets.digest("123456")


def test_each_purpose_gets_its_own_key():
    secret = SECRET_KEY.encode()
    keys = {derive_key(secret, purpose) for purpose in ("code-hmac", "code-seal", "routing-tag")}
    assert len(keys) == 3
    assert all(len(key) == 32 for key in keys)
    assert derive_key(secret, "code-hmac") == derive_key(secret, "code-hmac")


# Sealing


def test_seal_and_unseal_round_trip(code_secrets):
    sealed = code_secrets.seal(SID, "012345")
    assert code_secrets.unseal(SID, sealed) == "012345"


def test_unicode_text_round_trips(code_secrets):
    text = "Votre code Acme : 012345 — ne le partagez pas"
    assert code_secrets.unseal(SID, code_secrets.seal(SID, text)) == text


def test_another_app_with_the_same_secret_key_unseals(code_secrets):
    sealed = code_secrets.seal(SID, "012345")
    assert CodeSecrets(SECRET_KEY.encode()).unseal(SID, sealed) == "012345"


def test_the_sealed_text_does_not_contain_the_code(code_secrets):
    code = "987654"
    sealed = code_secrets.seal(SID, code)
    assert code not in sealed
    assert code.encode() not in base64.urlsafe_b64decode(sealed)


def test_sealing_twice_gives_different_text(code_secrets):
    assert code_secrets.seal(SID, "012345") != code_secrets.seal(SID, "012345")


def test_the_sealed_text_is_url_safe(code_secrets):
    assert re.fullmatch(r"[A-Za-z0-9_=-]+", code_secrets.seal(SID, "012345"))


def test_unseal_with_another_sid_fails(code_secrets):
    sealed = code_secrets.seal(SID, "012345")
    with pytest.raises(SealError):
        code_secrets.unseal(OTHER_SID, sealed)


def test_unseal_with_another_secret_key_fails(code_secrets, other_secrets):
    sealed = code_secrets.seal(SID, "012345")
    with pytest.raises(SealError):
        other_secrets.unseal(SID, sealed)


@pytest.mark.parametrize("position", [0, 5, 12, 20, -1])
def test_unseal_of_a_tampered_seal_fails(code_secrets, position):
    raw = bytearray(base64.urlsafe_b64decode(code_secrets.seal(SID, "012345")))
    raw[position] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(SealError):
        code_secrets.unseal(SID, tampered)


def test_unseal_of_a_truncated_seal_fails(code_secrets):
    sealed = code_secrets.seal(SID, "012345")
    raw = base64.urlsafe_b64decode(sealed)
    with pytest.raises(SealError):
        code_secrets.unseal(SID, base64.urlsafe_b64encode(raw[:-1]).decode())


@pytest.mark.parametrize(
    "garbage",
    ["", "not a seal", "abc", "====", "A" * 40, "é", base64.urlsafe_b64encode(b"x" * 12).decode()],
)
def test_unseal_of_garbage_fails(code_secrets, garbage):
    with pytest.raises(SealError):
        code_secrets.unseal(SID, garbage)


# Buckets and number ids (Redis key names)


def test_a_sid_carries_the_numbers_bucket_and_id(code_secrets):
    sid = code_secrets.new_sid("+14155550123")
    assert re.fullmatch(r"VE[0-9a-f]{32}", sid)
    assert bucket_of(sid) == code_secrets.bucket("+14155550123")
    assert number_id_of(sid) == code_secrets.number_id("+14155550123")
    assert re.fullmatch(r"[0-9a-f]{2}", bucket_of(sid))
    assert re.fullmatch(r"[0-9a-f]{12}", number_id_of(sid))
    assert sid != code_secrets.new_sid("+14155550123"), "56 random bits of its own"


def test_the_number_id_is_stable_per_number(code_secrets):
    again = CodeSecrets(SECRET_KEY.encode())
    assert code_secrets.number_id("+14155550123") == again.number_id("+14155550123")


def test_the_number_id_differs_between_numbers_and_buckets_spread(code_secrets):
    numbers = [f"+1415555{n:04d}" for n in range(2000)]
    assert len({code_secrets.number_id(n) for n in numbers}) == 2000
    assert len({code_secrets.bucket(n) for n in numbers}) == 256, "every bucket gets numbers"


def test_the_number_id_differs_between_keys(code_secrets, other_secrets):
    assert code_secrets.number_id("+14155550123") != other_secrets.number_id("+14155550123")


def test_the_number_id_does_not_reveal_the_number(code_secrets):
    number_id = code_secrets.number_id("+14155550123")
    assert number_id not in "+14155550123"
    assert number_id not in code_secrets.digest("+14155550123")
