"""Settings: defaults, one ConfigError naming every bad variable, rates, and dev secrets."""

from __future__ import annotations

import stat

import pytest

from ivr.config import (
    DEFAULT_ALLOWED_COUNTRIES,
    ConfigError,
    Rate,
    load_settings,
    resolve_secrets,
)
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, CALLER_ID, PUBLIC_BASE_URL

TWILIO = {
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "TWILIO_CALLER_ID": CALLER_ID,
    "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
}


def problems_for(overrides):
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides)
    return caught.value.problems


# Defaults


def test_defaults_need_no_environment():
    settings = load_settings()
    assert settings.otp_length == 6
    assert settings.otp_ttl_seconds == 600
    assert settings.otp_max_attempts == 5
    assert settings.allowed_countries == frozenset(DEFAULT_ALLOWED_COUNTRIES.split(","))
    assert {"US", "CA", "GB", "DE", "AU", "NZ"} <= settings.allowed_countries
    assert settings.send_limit_per_number == Rate(5, 600)
    assert settings.send_limit_per_prefix == Rate(30, 600)
    assert settings.send_limit_per_token == Rate(500, 3600)
    assert settings.check_failure_limit_per_number == Rate(10, 3600)
    assert settings.default_locale == "en-US"
    assert settings.voice_prompts_dir.is_dir()


def test_without_a_twilio_account_the_simulated_carrier_is_used():
    settings = load_settings()
    assert not settings.uses_twilio
    assert settings.twilio_auth_token is None
    assert settings.secret_key is None
    assert settings.redis_url is None


def test_a_complete_twilio_account_is_accepted():
    settings = load_settings(TWILIO)
    assert settings.uses_twilio
    assert settings.twilio_caller_id == CALLER_ID
    assert settings.twilio_auth_token.get_secret_value() == AUTH_TOKEN


# Bad values: each one a ConfigError naming its variable


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTP_LENGTH", 4),
        ("OTP_LENGTH", 11),
        ("OTP_LENGTH", "six"),
        ("OTP_TTL_SECONDS", 0),
        ("OTP_TTL_SECONDS", 3601),
        ("OTP_MAX_ATTEMPTS", 0),
        ("SEND_LIMIT_PER_NUMBER", "5 per minute"),
        ("SEND_LIMIT_PER_PREFIX", "0/10m"),
        ("SEND_LIMIT_PER_TOKEN", "10/0h"),
        ("CHECK_FAILURE_LIMIT_PER_NUMBER", "ten/1h"),
        ("ALLOWED_COUNTRIES", "US,XX"),
        ("ALLOWED_COUNTRIES", ","),
        ("TWILIO_CALLER_ID", "not-a-number"),
        ("TWILIO_CALLER_ID", "14155550100"),
        ("TWILIO_ACCOUNT_SID", "AC123"),
        ("PUBLIC_BASE_URL", "ivr.example.test"),
        ("REDIS_URL", "http://localhost:6379"),
        ("DEFAULT_LOCALE", "english"),
        ("VOICE_PROMPTS_DIR", "/no/such/folder"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_is_reported_with_its_variable_name(name, value):
    problems = problems_for({name: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"{name}: ")


def test_the_error_message_lists_each_problem_on_its_own_line():
    with pytest.raises(ConfigError) as caught:
        load_settings({"OTP_LENGTH": 4})
    message = str(caught.value)
    assert message.startswith("invalid configuration:")
    assert "\n  OTP_LENGTH: " in message


def test_an_unknown_country_is_named_in_the_message():
    (problem,) = problems_for({"ALLOWED_COUNTRIES": "US,XX"})
    assert problem.startswith("ALLOWED_COUNTRIES: ")
    assert "unknown: XX" in problem


def test_a_bad_rate_says_what_a_rate_looks_like():
    (problem,) = problems_for({"SEND_LIMIT_PER_NUMBER": "5 per minute"})
    assert "5/10m" in problem
    assert "'5 per minute'" in problem


def test_account_sid_without_auth_token_is_refused():
    (problem,) = problems_for({"TWILIO_ACCOUNT_SID": ACCOUNT_SID})
    assert "TWILIO_ACCOUNT_SID" in problem
    assert "TWILIO_AUTH_TOKEN" in problem


def test_auth_token_without_account_sid_is_refused():
    (problem,) = problems_for({"TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    assert "TWILIO_ACCOUNT_SID" in problem
    assert "TWILIO_AUTH_TOKEN" in problem


def test_a_twilio_account_without_caller_id_is_refused():
    (problem,) = problems_for({**TWILIO, "TWILIO_CALLER_ID": None})
    assert "TWILIO_CALLER_ID" in problem


def test_a_twilio_account_without_public_base_url_is_refused():
    (problem,) = problems_for({**TWILIO, "PUBLIC_BASE_URL": None})
    assert "PUBLIC_BASE_URL" in problem


def test_an_unknown_setting_in_overrides_is_refused_by_name():
    assert problems_for({"OTP_LENGHT": 7}) == ["OTP_LENGHT: not a known setting"]


def test_several_bad_values_are_reported_at_once():
    problems = problems_for(
        {
            "OTP_LENGTH": 4,
            "OTP_TTL_SECONDS": 0,
            "SEND_LIMIT_PER_PREFIX": "lots",
            "ALLOWED_COUNTRIES": "XX",
        }
    )
    named = sorted(problem.split(":")[0] for problem in problems)
    assert named == ["ALLOWED_COUNTRIES", "OTP_LENGTH", "OTP_TTL_SECONDS", "SEND_LIMIT_PER_PREFIX"]


def test_bad_values_from_the_environment_are_all_reported(monkeypatch):
    monkeypatch.setenv("OTP_LENGTH", "3")
    monkeypatch.setenv("OTP_MAX_ATTEMPTS", "100")
    problems = problems_for(None)
    assert sorted(problem.split(":")[0] for problem in problems) == [
        "OTP_LENGTH",
        "OTP_MAX_ATTEMPTS",
    ]


# Secrets never appear in error messages


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SECRET_KEY", "short-hunter2-secret"),
        ("IVR_API_TOKEN", "hunter2-tok"),
        ("TWILIO_AUTH_TOKEN", 12345678),
    ],
)
def test_a_rejected_secret_is_not_echoed(name, value):
    problems = problems_for({name: value})
    assert any(problem.startswith(f"{name}: ") for problem in problems)
    assert all(str(value) not in problem for problem in problems)


def test_an_auth_token_without_account_is_not_echoed():
    problems = problems_for({"TWILIO_AUTH_TOKEN": "hunter2-auth-token"})
    assert all("hunter2" not in problem for problem in problems)


def test_a_rejected_secret_from_the_environment_is_not_echoed(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "env-hunter2-too-short")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "SECRET_KEY" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_rejected_redis_url_does_not_echo_its_password():
    problems = problems_for({"REDIS_URL": "http://:hunter2-redis-pass@redis.internal:6379/0"})
    assert problems[0].startswith("REDIS_URL: ")
    assert "hunter2-redis-pass" not in problems[0]


# Rates


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("5/10m", Rate(5, 600)),
        ("100/h", Rate(100, 3600)),
        ("100/1h", Rate(100, 3600)),
        ("3/30s", Rate(3, 30)),
        ("2/1d", Rate(2, 86400)),
        (" 7 / 2 m ", Rate(7, 120)),
    ],
)
def test_rate_parse_reads_count_and_window(text, rate):
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["5 per minute", "5/10", "/10m", "0/10m", "5/0s", "5/10w", ""])
def test_rate_parse_refuses_malformed_or_empty_rates(text):
    with pytest.raises(ValueError, match="rate"):
        Rate.parse(text)


def test_a_rate_prints_in_a_form_it_parses_back_from():
    assert str(Rate(5, 600)) == "5/600s"
    assert Rate.parse(str(Rate(5, 600))) == Rate(5, 600)


# The environment


def test_values_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("OTP_LENGTH", "8")
    monkeypatch.setenv("OTP_TTL_SECONDS", "120")
    monkeypatch.setenv("ALLOWED_COUNTRIES", "us, gb")
    monkeypatch.setenv("SEND_LIMIT_PER_NUMBER", "3/1h")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://ivr.example.test/")
    settings = load_settings()
    assert settings.otp_length == 8
    assert settings.otp_ttl_seconds == 120
    assert settings.allowed_countries == {"US", "GB"}
    assert settings.send_limit_per_number == Rate(3, 3600)
    assert settings.public_base_url == "https://ivr.example.test"


def test_a_star_allows_every_country(monkeypatch):
    monkeypatch.setenv("ALLOWED_COUNTRIES", "*")
    assert load_settings().allowed_countries == {"*"}


def test_an_empty_environment_variable_keeps_the_default(monkeypatch):
    monkeypatch.setenv("OTP_LENGTH", "")
    assert load_settings().otp_length == 6


def test_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("OTP_LENGTH", "8")
    assert load_settings({"OTP_LENGTH": 7}).otp_length == 7


def test_the_caller_id_is_normalised_to_e164():
    settings = load_settings({**TWILIO, "TWILIO_CALLER_ID": "+1 (415) 555-0100"})
    assert settings.twilio_caller_id == "+14155550100"


# Development secrets in the instance folder


def test_missing_secrets_are_generated_into_the_instance_folder(tmp_path):
    instance = tmp_path / "instance"
    secrets = resolve_secrets(load_settings(), instance)
    assert sorted(p.name for p in instance.iterdir()) == [
        "api_token",
        "secret_key",
        "webhook_auth_token",
    ]
    for path in instance.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert secrets.secret_key == (instance / "secret_key").read_text().encode()
    assert secrets.api_token == (instance / "api_token").read_text()
    assert secrets.webhook_auth_token == (instance / "webhook_auth_token").read_text()
    assert len(secrets.secret_key) >= 32
    assert len({secrets.secret_key.decode(), secrets.api_token, secrets.webhook_auth_token}) == 3


def test_generated_secrets_survive_a_restart(tmp_path):
    instance = tmp_path / "instance"
    first = resolve_secrets(load_settings(), instance)
    second = resolve_secrets(load_settings(), instance)
    assert second.secret_key == first.secret_key
    assert second.api_token == first.api_token
    assert second.webhook_auth_token == first.webhook_auth_token
    assert len(list(instance.iterdir())) == 3


def test_another_instance_folder_gets_other_secrets(tmp_path):
    first = resolve_secrets(load_settings(), tmp_path / "one")
    second = resolve_secrets(load_settings(), tmp_path / "two")
    assert first.secret_key != second.secret_key
    assert first.api_token != second.api_token


def test_configured_secrets_are_used_and_not_written(tmp_path):
    settings = load_settings({**TWILIO, "SECRET_KEY": "k" * 32, "IVR_API_TOKEN": "t" * 16})
    instance = tmp_path / "instance"
    secrets = resolve_secrets(settings, instance)
    assert secrets.secret_key == b"k" * 32
    assert secrets.api_token == "t" * 16
    assert secrets.webhook_auth_token == AUTH_TOKEN
    assert not instance.exists() or not list(instance.iterdir())


@pytest.mark.parametrize("content", ["", "short", " " * 40])
def test_a_truncated_instance_secret_stops_the_start(tmp_path, content):
    """An emptied secret file would key HMACs (and sign webhooks) with a constant."""
    from ivr.config import ConfigError, load_settings, resolve_secrets

    (tmp_path / "webhook_auth_token").write_text(content)
    with pytest.raises(ConfigError, match="webhook_auth_token: shorter than 32"):
        resolve_secrets(load_settings(), tmp_path)


def test_a_default_locale_without_a_catalog_is_a_config_error(make_app):
    from ivr.config import ConfigError

    with pytest.raises(ConfigError, match="DEFAULT_LOCALE"):
        make_app(default_locale="it-IT")
