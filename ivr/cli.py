"""The `ivr` command: serve the app, check the configuration, manage API tokens and the
customer directory."""

from __future__ import annotations

import base64
import io
import math
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import phonenumbers
import redis
from flask import Flask

from ivr.config import MAX_FLASH_CALL_GUESS_ODDS, ConfigError, Settings, redact_url
from ivr.flow_cli import (
    VERBOSITY,
    command_log_level,
    flows,
    settings_or_exit,
    simulate,
    verbose_log_level,
)
from ivr.prompts import PromptCatalogs, load_catalogs
from ivr.users_cli import cli_actor, users

_SECRET_FIELDS = {
    "twilio_auth_token",
    "secret_key",
    "ivr_api_token",
    "customer_lookup_secret",
    "events_webhook_secret",
    "metrics_token",
}


@click.group()
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Show the app's log while a command runs: -v for INFO, -vv for DEBUG (else only "
    "warnings; LOG_LEVEL set in the environment is used too).",
)
@click.pass_context
def main(context: click.Context, verbose: int) -> None:
    """Voice-OTP and IVR authentication service."""
    context.meta[VERBOSITY] = verbose


@main.command()
@click.option("--port", type=int, help="Port to bind (default $PORT or 5000).")
@click.option("--workers", type=int, help="gunicorn workers (default $WEB_CONCURRENCY or 2).")
def serve(port: int | None, workers: int | None) -> None:
    """Serve the app with gunicorn (embedded Redis when REDIS_URL is unset)."""
    if port:
        os.environ["PORT"] = str(port)
    if workers:
        os.environ["WEB_CONCURRENCY"] = str(workers)
    if level := verbose_log_level():  # without -v the server logs as LOG_LEVEL says (INFO)
        os.environ["LOG_LEVEL"] = level
    settings_or_exit()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:ivr.gunicorn_config",
        "ivr:create_app()",
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - gunicorn replaces this process


def _catalogs_or_fail(settings: Settings) -> PromptCatalogs:
    try:
        return load_catalogs(settings.voice_prompts_dir, settings.default_locale)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "(unset)"
    if name in _SECRET_FIELDS:
        return "(set, hidden)"
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    if isinstance(value, tuple):
        return ",".join(value) or "(none)"
    if name.endswith("_url"):
        return redact_url(str(value))
    return str(value)


def call_channel_notes(settings: Settings) -> list[str]:
    """What the missed-call and flash-call set-up amounts to, in plain words: the numbers, and
    for flash calls the odds that someone who never got the call guesses the code."""
    notes = []
    if settings.missed_call_pool:
        level = settings.missed_call_min_attestation or "any (or none)"
        notes.append(
            f"\nMissed calls: users ring {', '.join(settings.missed_call_pool)}; caller ID "
            f"attestation accepted: {level}; window {settings.missed_call_ttl_seconds} s."
        )
    pool, tries = settings.flash_call_numbers, settings.flash_call_max_attempts
    if pool:
        odds = settings.flash_call_guess_odds
        notes.append(
            f"\nFlash calls: {len(pool)} numbers, codes of {settings.flash_call_code_length} "
            f"digits. The code can only be one of the pool's endings, so a guess is right 1 time "
            f"in {len(pool)}; with {tries} attempt(s), a guesser passes up to {odds:.0%} of the "
            "verifications they try."
        )
        if odds > MAX_FLASH_CALL_GUESS_ODDS:  # the app starts only with the override
            needed = math.ceil(tries / MAX_FLASH_CALL_GUESS_ODDS)
            notes.append(
                "WARNING: weak odds, accepted by FLASH_CALL_ACCEPT_WEAK_ODDS. For at most 1 in "
                f"{round(1 / MAX_FLASH_CALL_GUESS_ODDS)}, "
                f"use {needed} or more numbers (FLASH_CALL_NUMBERS) or fewer attempts "
                "(FLASH_CALL_MAX_ATTEMPTS), or use flash calls only with another factor."
            )
    return notes


def production_gaps(settings: Settings) -> list[str]:
    """What a production deployment still lacks, one sentence each."""
    gaps = []
    if not settings.uses_twilio:
        gaps.append(
            "No Twilio account (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_CALLER_ID): "
            "calls and SMS go to the simulated carrier."
        )
    if not settings.public_base_url:
        gaps.append("PUBLIC_BASE_URL is unset: Twilio cannot reach the webhooks.")
    elif not settings.public_base_url.startswith("https://"):
        gaps.append("PUBLIC_BASE_URL is not https: webhooks would travel in clear text.")
    if settings.secret_key is None:
        gaps.append(
            "SECRET_KEY is unset: a development key in the instance folder is used; "
            "hosts would not share it."
        )
    if settings.redis_url is None:
        gaps.append("REDIS_URL is unset: the embedded Redis serves one host only.")
    if settings.ivr_api_token is None:
        gaps.append(
            "IVR_API_TOKEN is unset: a development token in the instance folder is "
            "accepted (or issue tokens with 'ivr tokens create')."
        )
    if "*" in settings.allowed_countries:
        gaps.append("ALLOWED_COUNTRIES is '*': codes may go to any country (toll-fraud risk).")
    if settings.customer_lookup_url and not settings.customer_lookup_url.startswith("https://"):
        gaps.append(
            "CUSTOMER_LOOKUP_URL is not https: customer lookups would travel in clear text."
        )
    if settings.events_webhook_url and not settings.events_webhook_url.startswith("https://"):
        gaps.append("EVENTS_WEBHOOK_URL is not https: events would travel in clear text.")
    if settings.otp_ttl_seconds < 60:
        gaps.append(
            f"OTP_TTL_SECONDS is {settings.otp_ttl_seconds}: codes expire before most "
            "people can type them."
        )
    return gaps


@dataclass
class RedisFindings:
    """What `ivr check-config` learned from the Redis at REDIS_URL: a one-line summary, what
    production still needs there, and what it could not check."""

    summary: str
    gaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _NodeFacts:
    """What one Redis server (or one cluster master) says of how it keeps data."""

    policy: str
    aof: bool
    snapshots: str | None  # the `save` points; None when CONFIG GET is refused
    refused: str
    role: str
    replicas: int


def _node_facts(client: Any, node: Any = None) -> _NodeFacts:
    """Ask one server: `node` is a cluster master (INFO and CONFIG go to one node each, never
    through a pipeline, which a cluster client refuses them in); None for a lone server."""
    target = {} if node is None else {"target_nodes": node}
    memory = client.info("memory", **target)
    persistence = client.info("persistence", **target)
    replication = client.info("replication", **target)
    snapshots: str | None = None
    refused = ""
    try:
        snapshots = str(client.config_get("save", **target).get("save", "")).strip()
    except redis.RedisError as exc:  # managed services and ACLs often refuse CONFIG
        refused = f"CONFIG GET refused: {type(exc).__name__}"
    return _NodeFacts(
        memory.get("maxmemory_policy", "unknown"),
        bool(persistence.get("aof_enabled")),
        snapshots,
        refused,
        str(replication.get("role", "unknown")),
        int(replication.get("connected_slaves", 0)),
    )


def redis_findings(url: str) -> RedisFindings:
    """Ask the Redis at `url` (once, failing fast) whether it can hold the app's state: it
    answers, never evicts, and persists; on a cluster, every master is asked. Replicas are
    reported, not required."""
    from redis.cluster import RedisCluster

    from ivr.store import connect

    client = connect(url)
    try:
        client.ping()
        if isinstance(client, RedisCluster):
            nodes = {node.name: _node_facts(client, node) for node in client.get_primaries()}
        else:
            nodes = {"": _node_facts(client)}
    except redis.RedisError as exc:
        problem = f"REDIS_URL does not answer ({type(exc).__name__})"
        return RedisFindings(f"{problem}.", [f"{problem}: the app cannot serve without it."])
    finally:
        client.close()
    found = RedisFindings(_summary(nodes))
    evicting = {name: facts.policy for name, facts in nodes.items() if facts.policy != "noeviction"}
    if evicting:
        policies = ", ".join(sorted(set(evicting.values())))
        where = "" if "" in nodes else f" on {', '.join(sorted(evicting))}"
        found.gaps.append(
            f"Redis's maxmemory-policy is {policies}{where}: use noeviction, or codes, send "
            "limits and call state may be evicted under memory pressure."
        )
    unread = [
        facts.refused for facts in nodes.values() if not facts.aof and facts.snapshots is None
    ]
    if unread:
        found.notes.append(
            f"Redis persistence not checked ({unread[0]}): make sure AOF or RDB snapshots are on."
        )
    volatile = sorted(name for name, f in nodes.items() if not f.aof and f.snapshots == "")
    if volatile:
        where = "" if "" in nodes else f" on {', '.join(volatile)}"
        found.gaps.append(
            f"Redis persists nothing{where} (appendonly no, no save points): a restart loses "
            "the customer directory, published flows, sessions and send limits."
        )
    return found


def _summary(nodes: dict[str, _NodeFacts]) -> str:
    """One line for a lone server; for a cluster, one line per master."""

    def described(facts: _NodeFacts) -> str:
        shown = "(not readable)" if facts.snapshots is None else facts.snapshots or "none"
        return (
            f"maxmemory-policy {facts.policy}, appendonly {'yes' if facts.aof else 'no'}, "
            f"save {shown}, {facts.role} with {facts.replicas} replica(s)"
        )

    if "" in nodes:
        return f"Redis answers: {described(nodes[''])}."
    lines = [f"Redis Cluster answers: {len(nodes)} master(s)."]
    lines += [f"  {name}: {described(facts)}." for name, facts in sorted(nodes.items())]
    return "\n".join(lines)


@main.group()
def events() -> None:
    """The events webhook (EVENTS_WEBHOOK_URL)."""


@events.command("secret")
def events_secret() -> None:
    """Print a new EVENTS_WEBHOOK_SECRET (Standard Webhooks format: whsec_ + 32 random bytes)."""
    click.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())


@main.command("check-config")
@click.option("--production", is_flag=True, help="Exit 1 if production needs anything more.")
def check_config(production: bool) -> None:
    """Print the effective configuration (secrets hidden) and what production still needs."""
    settings = settings_or_exit()
    _catalogs_or_fail(settings)
    click.echo("Effective configuration:")
    for name in Settings.model_fields:
        click.echo(f"  {name.upper():<32} {_shown(name, getattr(settings, name))}")
    carrier = "twilio" if settings.uses_twilio else "simulated"
    click.echo(f"\nCarrier: {carrier}; Redis: {'REDIS_URL' if settings.redis_url else 'embedded'}")
    gaps = production_gaps(settings)
    if settings.redis_url:
        found = redis_findings(settings.redis_url)
        click.echo(found.summary)
        gaps += found.gaps
        for note in found.notes:
            click.echo(f"Note: {note}")
    for line in call_channel_notes(settings):
        click.echo(line)
    if gaps:
        click.echo("\nMissing for production:")
        for gap in gaps:
            click.echo(f"  - {gap}")
    else:
        click.echo("\nReady for production.")
    if production and gaps:
        sys.exit(1)


def _app() -> Flask:
    """The configured app, for a command's work; it logs only warnings (see
    command_log_level), so `ivr tokens list` prints tokens, not how the flows loaded."""
    from ivr import create_app

    try:
        return create_app(command_log_level())
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@main.group()
def tokens() -> None:
    """API tokens, stored only as keyed hashes."""


@tokens.command("create")
@click.argument("name")
@click.option(
    "--service",
    metavar="VA…",
    help="the one Verify Service the token may act in (on /v1 and /v2); without it, every "
    "Service, and the default one on /v1",
)
def tokens_create(name: str, service: str | None) -> None:
    """Issue a token for NAME; it is printed once."""
    app = _app()
    ivr = app.extensions["ivr"]
    if service is not None and ivr.verify_services.get(service) is None:
        raise click.ClickException(f"no Verify Service {service!r} (see GET /v2/Services)")
    try:
        token = ivr.api_tokens.issue(name, service)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
    # On stderr: a script reading the token gets it alone. Twilio SDKs may send the key sid
    # as the Basic auth user name (the token is the password) on /v2.
    key_sid = app.extensions["ivr"].api_tokens.key_sid(token)
    click.echo(f"key sid (a Twilio SDK's user name on /v2): {key_sid}", err=True)


@tokens.command("list")
def tokens_list() -> None:
    """Names and creation times of issued tokens (never the tokens)."""
    from ivr.verification.models import iso_time

    app = _app()
    issued = app.extensions["ivr"].api_tokens.list()
    for token in issued:
        scope = f"\t{token.service}" if token.service else ""
        click.echo(f"{token.name}\t{iso_time(token.created_at * 1000)}{scope}")
    if not issued:  # on stderr: a script reading the list still gets an empty one
        if app.extensions["ivr"].settings.ivr_api_token is not None:
            also = "IVR_API_TOKEN is accepted too"
        else:
            also = (
                f"the development token in {Path(app.instance_path) / 'api_token'} is accepted too"
            )
        click.echo(f"no tokens issued; create one with 'ivr tokens create NAME' ({also})", err=True)


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke the token issued for NAME."""
    if not _app().extensions["ivr"].api_tokens.revoke(name):
        raise click.ClickException(f"no token named {name!r}")
    click.echo(f"revoked {name}")


@main.group()
def prompts() -> None:
    """The voice prompt catalogs."""


@prompts.command("check")
def prompts_check() -> None:
    """List, per locale, prompt keys missing or whose placeholders differ from the default."""
    settings = settings_or_exit()
    try:
        catalogs = load_catalogs(settings.voice_prompts_dir, settings.default_locale)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    problems = 0
    for locale, keys in catalogs.missing_keys().items():
        problems += len(keys)
        click.echo(f"{locale}: missing {', '.join(keys)} (the default locale is used)")
    for locale, keys in catalogs.placeholder_mismatches().items():
        problems += len(keys)
        click.echo(
            f"{locale}: placeholders differ from {settings.default_locale} in {', '.join(keys)}"
        )
    for locale, files in catalogs.stray_recordings().items():
        problems += len(files)
        click.echo(f"{locale}: recordings named after no prompt: {', '.join(files)}")
    for locale, keys in catalogs.missing_recordings().items():
        click.echo(f"{locale}: no recording (text-to-speech is used) for {', '.join(keys)}")
    click.echo(
        f"{len(catalogs.locales)} locales: {', '.join(catalogs.locales)}; {problems} problem(s)"
    )
    if problems:
        sys.exit(1)


@main.group()
def customers() -> None:
    """The customer directory the IVR identifies callers with."""


@customers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--country", help="ISO country for numbers in national format, e.g. US.")
@click.option("--dry-run", is_flag=True, help="Check every row; write nothing.")
def customers_import(file: Path, country: str | None, dry_run: bool) -> None:
    """Create or replace customers from a CSV with the header id,phone,name,sms[,locale].

    Every row is checked first; if any is bad, each is reported as FILE:LINE and nothing is
    written. sms is true/false, yes/no or 1/0 (empty: true).
    """

    if country is not None and country.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise click.BadParameter("an ISO 3166 code like US", param_hint="--country")
    try:
        text = file.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a BOM
    except UnicodeDecodeError as exc:
        click.echo(f"{file}: not UTF-8 text (byte {exc.start})", err=True)
        sys.exit(1)
    ivr = _app().extensions["ivr"]
    result = ivr.customers.import_csv(
        io.StringIO(text, newline=""),
        country=country,
        resolve_locale=ivr.prompts.resolve_locale,
        dry_run=dry_run,
    )
    if not dry_run and (result.created or result.replaced):  # as the console's import does
        ivr.audit.record(
            cli_actor(),
            "customer.import",
            file.name[:100],
            after={"created": result.created, "replaced": result.replaced},
        )
    for line, message in sorted(result.errors):
        click.echo(f"{file}:{line}: {message}", err=True)
    if result.errors:
        written = result.created + result.replaced
        outcome = (
            f"the other {written} row(s) were written (the directory changed meanwhile)."
            if written
            else "nothing was written."
        )
        bad_rows = len({line for line, _ in result.errors})
        click.echo(f"{bad_rows} bad row(s); {outcome}", err=True)
        sys.exit(1)
    verb = "would be" if dry_run else "were"
    click.echo(f"{result.created} customer(s) {verb} created, {result.replaced} replaced.")


@customers.command("show")
@click.argument("customer_id")
def customers_show(customer_id: str) -> None:
    """Print the customer with this account number."""
    customer = _app().extensions["ivr"].customers.get(customer_id)
    if customer is None:
        raise click.ClickException(f"no customer {customer_id}")
    for name, value in customer.to_api().items():
        click.echo(f"{name}: {'(unset)' if value is None else value}")


@main.command("migrate")
def migrate() -> None:
    """Move data kept in an older key layout into today's (run once after upgrading; running
    it again does nothing). Today: customers and API tokens, once in one slot each, now
    sharded over Redis Cluster slots; and recordings uploaded before they were counted, found
    by a SCAN, counted against RECORDINGS_MAX_MB and left to the sweep."""
    ivr = _app().extensions["ivr"]
    customers_moved = ivr.customers.migrate_legacy_layout()
    tokens_moved = ivr.api_tokens.migrate_legacy_layout()
    recordings_counted = ivr.recordings.count_stored()
    click.echo(f"{customers_moved} customer(s) and {tokens_moved} API token(s) moved.")
    click.echo(f"{recordings_counted} older recording(s) counted against RECORDINGS_MAX_MB.")


# The call-center team's tools live with the flows they serve (ivr/flow_cli.py).
main.add_command(flows)
main.add_command(simulate)
main.add_command(users)
