"""A code never appears in logs, URLs, Redis in plain text, API responses or the Calls request;
only its keyed hash is stored."""

from __future__ import annotations

import hashlib
import logging
import time

from ivr.verification.codes import CodeSecrets
from tests.conftest import ACCOUNT_SID, SECRET_KEY, Api, twilio_post, twiml

TO = "+14155550123"


def every_redis_value(redis_client) -> str:
    """Every key and value in the database, as one text to search."""
    dump = []
    for key in redis_client.scan_iter(count=1000):
        kind = redis_client.type(key)
        dump.append(key)
        if kind == "string":
            dump.append(redis_client.get(key))
        elif kind == "hash":
            dump.extend(f"{k}={v}" for k, v in redis_client.hgetall(key).items())
        elif kind == "zset":
            dump.extend(redis_client.zrange(key, 0, -1))
        elif kind == "list":
            dump.extend(redis_client.lrange(key, 0, -1))
    return "\n".join(dump)


def heard_code(client, verification) -> str:
    attempt = verification["send_attempts"][-1]
    root = twiml(
        twilio_post(
            client,
            f"/voice/code/{verification['sid']}/{verification['locale']}/reveal",
            {"CallSid": attempt["provider_sid"], "AccountSid": ACCOUNT_SID, "Digits": "5"},
        )
    )
    return "".join((pause.tail or "").strip() for pause in root.find("Say").iter("break"))


def test_a_voice_code_leaks_nowhere(api, client, twilio_api, redis_client, caplog):
    caplog.set_level(logging.DEBUG)
    started = api.start(to=TO, channel="call")
    verification = started.get_json()
    code = heard_code(client, verification)
    assert len(code) == 6
    fetched = api.get(f"/v1/verifications/{verification['sid']}")
    stored = every_redis_value(redis_client)

    assert code not in started.get_data(as_text=True)
    assert code not in fetched.get_data(as_text=True)
    assert started.headers["Location"].count(code) == 0
    for request in twilio_api.requests:
        assert code not in request.raw_body
        assert code not in request.path
    assert code not in stored
    assert code not in caplog.text
    assert TO not in caplog.text, "numbers are masked in logs"
    # What is stored is the keyed hash, not an unkeyed one.
    assert CodeSecrets(SECRET_KEY.encode()).digest(code) in stored
    assert hashlib.sha256(code.encode()).hexdigest() not in stored

    checked = api.check(code, to=TO)
    assert code not in checked.get_data(as_text=True)
    assert checked.get_json()["valid"] is True
    assert code not in caplog.text
    # Once approved, even the hash and the sealed copy are gone.
    assert CodeSecrets(SECRET_KEY.encode()).digest(code) not in every_redis_value(redis_client)


def test_an_sms_code_is_only_in_the_message_itself(api, twilio_api, redis_client, caplog):
    caplog.set_level(logging.DEBUG)
    started = api.start(to=TO, channel="sms")
    body = twilio_api.messages()[-1].value("Body")
    code = next(word for word in body.replace(".", " ").split() if word.isdigit())
    assert code not in started.get_data(as_text=True)
    assert code not in every_redis_value(redis_client)
    assert code not in caplog.text
    assert code not in twilio_api.messages()[-1].value("StatusCallback")


def test_simulated_sms_bodies_are_sealed_in_redis(simulated_app, redis_client, caplog):
    caplog.set_level(logging.DEBUG)
    api = Api(simulated_app.test_client(), simulated_app.extensions["ivr"].secrets.api_token)
    api.start(to=TO, channel="sms")
    outbox = api.get("/v1/simulator/outbox").get_json()["items"]
    body = outbox[0]["body"]
    code = next(word for word in body.replace(".", " ").split() if word.isdigit())
    assert code not in every_redis_value(redis_client)
    assert code not in caplog.text


def test_issued_api_tokens_are_stored_only_as_keyed_hashes(app, redis_client):
    token = app.extensions["ivr"].api_tokens.issue("billing")
    assert token not in every_redis_value(redis_client)
    assert Api(app.test_client(), token).get("/v1/verifications/VE" + "0" * 32).status_code == 404


def test_every_key_a_flow_leaves_is_named_in_keys_py(api, client, twilio_api, redis_client):
    """Every key of a verification is one keys.py names (the scripts are given them all)."""
    from ivr import keys
    from ivr.verification.codes import CodeSecrets, scope_tag

    verification = api.start(to=TO, channel="call").get_json()
    heard = heard_code(client, verification)
    api.check("0" * 6 if heard != "0" * 6 else "1" * 6, to=TO)
    secrets = CodeSecrets(SECRET_KEY.encode())
    bucket, number_id = secrets.bucket(TO), secrets.number_id(TO)
    named = {
        keys.pending_verification(bucket, number_id, scope_tag(None)),  # a wrong code: pending
        keys.check_failures(bucket, number_id),
        keys.send_counter("prefix", TO[:-4]),
        keys.send_counter("client", "env"),
    }
    # The send log's generation is the 10-minute window (SEND_LIMIT_PER_NUMBER's default) the
    # send fell in: this one or, a moment after a boundary, the one before.
    generation = int(time.time() * 1000) // 600_000
    send_logs = {keys.sends(bucket, generation), keys.sends(bucket, generation - 1)}
    # The app's other keys (flow versions, the dashboard's counters, the console's users) are
    # checked where they are made; here: every key of the verification's own.
    others = (
        "ivr:{flows}:",
        "ivr:{prompts}:",
        "ivr:{stats:",
        "ivr:{recent}:",
        "ivr:{user",
        "ivr:{users}:",
    )
    found = {k for k in redis_client.scan_iter() if not k.startswith(others)}
    assert found - send_logs == named and len(found & send_logs) == 1
