"""The one settings object, built once from ``CIRELAY_*`` variables and an optional TOML file.

Every field's environment variable is ``CIRELAY_`` + the field name in upper case; a TOML file may
use either spelling. The environment wins over the file. Nothing else in cirelay reads
``os.environ``: the ``Settings`` built here is passed explicitly.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.tokens import derive_key
from service.webhooks.signing import parse_secrets
from service.webhooks.ssrf import Network, parse_networks

PREFIX = "CIRELAY_"
# Signs callback tokens when no CIRELAY_CALLBACK_SECRET is set (tests, embedding): never derived
# from another secret, so rotating the API token cannot invalidate a callback URL.
_PROCESS_CALLBACK_KEY = secrets.token_bytes(32)


class SettingsError(Exception):
    """A setting is missing or malformed; ``str()`` is one line naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def _setting(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # Service
    host: str = _setting(
        "0.0.0.0", "Address `cirelay serve` binds (`--sandbox`: 127.0.0.1 unless `--host`)."
    )
    port: int = _setting(8080, "Port `cirelay serve` binds.")
    admin_port: int = _setting(
        0,
        "Port of the management listener (`/metrics`, `/healthz`, `/readyz`); when set, `/metrics`"
        " and `/readyz` leave the main port. 0 = everything on the main port.",
    )
    admin_host: str = _setting("0.0.0.0", "Address the management listener binds.")
    public_url: str = _setting(
        "",
        "Base URL at which CI reaches this service; callbacks go to `<url>/v1/callbacks/<token>`.",
    )
    api_token: str = _setting(
        "", "Bearer token required on every `/v1` route (required unless `--sandbox`).", secret=True
    )
    callback_token: str = _setting(
        "", "Static callback token for workflows/queues configured by hand.", secret=True
    )
    callback_secret: str = _setting(
        "",
        "Keys of per-job callback tokens (HMAC), comma-separated: the first signs, every one"
        " verifies (rotation: put the new key first, drop the old once its jobs have ended)."
        " Required by `cirelay serve`; `--sandbox` generates one.",
        secret=True,
    )
    log_format: Literal["json", "console", "auto"] = _setting(
        "auto", "`json`, `console`, or `auto` (console on a TTY, JSON otherwise)."
    )
    log_level: str = _setting("info", "Minimum log level.")
    access_log: Literal["all", "errors", "off"] = _setting(
        "all", "Access log lines: every request, only answers of 400 and above, or none."
    )
    max_body_bytes: int = _setting(
        1_048_576, "Largest request or callback body accepted (413 above)."
    )
    max_xml_depth: int = _setting(32, "Deepest nesting accepted in XML/JSON documents.")
    max_connections: int = _setting(
        1000,
        "Most connections open at once per listener; past it the connection idle longest is"
        " closed to make room (the new one, if every connection is busy).",
    )
    idle_timeout_seconds: float = _setting(
        15.0,
        "A connection that sends no complete request headers this long after it opened or after"
        " its last answer is closed (header time-out and keep-alive).",
    )
    body_timeout_seconds: float = _setting(
        30.0, "A request body not wholly received this long after its headers is answered 408."
    )
    log_repeat_window_seconds: float = _setting(
        10.0,
        "The same log event (logger, level, event) is written once per window; the next one"
        " after it says how many were dropped (`repeats_dropped`). 0 = write every line.",
    )
    shutdown_grace_seconds: float = _setting(
        20.0, "On SIGTERM: how long in-flight work may finish before it is released."
    )

    # Database / queue
    database_url: str = _setting(
        "sqlite:///./cirelay.db",
        "Database: `sqlite:///path` (embedded, one replica) or"
        " `postgresql://user:password@host:port/db` (many replicas).",
    )
    database_pool_size: int = _setting(
        10, "PostgreSQL: connections per process (the pool's maximum)."
    )
    workers: int = _setting(4, "Concurrent submitter workers per process.")
    lease_seconds: float = _setting(
        30.0, "How long a claimed job stays claimed without a heartbeat."
    )
    poll_interval_seconds: float = _setting(
        1.0, "Idle submitter: longest wait before looking at the queue again."
    )
    retry_base_seconds: float = _setting(1.0, "Backoff base (full jitter) for retryable CI errors.")
    retry_cap_seconds: float = _setting(300.0, "Backoff cap.")
    retry_max_attempts: int = _setting(8, "Attempts before a job is dead-lettered (`dead`).")
    submitter_enabled: bool = _setting(
        True, "Run submitter workers in this process (false: intake and events only)."
    )

    # Tencent CI
    ci_endpoint: str = _setting(
        "", "CI base URL override; default `https://<bucket>.ci.<region>.myqcloud.com`."
    )
    ci_secret_id: str = _setting("", "CI SecretId.", secret=True)
    ci_secret_key: str = _setting("", "CI SecretKey.", secret=True)
    ci_token: str = _setting("", "STS session token (sent as `x-ci-security-token`).", secret=True)
    ci_bucket: str = _setting("", "Default bucket (`name-appid`) for jobs that name none.")
    ci_region: str = _setting("", "Default region (e.g. `ap-chongqing`) for jobs that name none.")
    ci_timeout_seconds: float = _setting(10.0, "Timeout of every CI call.")
    ci_rate_limit: float = _setting(10.0, "CI create calls per second per (region, bucket).")
    ci_concurrency: int = _setting(8, "Most CI calls in flight at once.")

    # Events
    reconcile_seconds: float = _setting(30.0, "How often unfinished batches are polled at CI.")
    reconcile_enabled: bool = _setting(
        True, "Run the reconciler (batch polling, missed callbacks) in this process."
    )
    reconcile_grace_seconds: float = _setting(
        60.0, "How long after a media job ends its callback may still arrive before it is polled."
    )
    max_events_per_callback: int = _setting(
        100, "JobsDetail entries one callback may carry; more is refused (`too_many_events`)."
    )
    rejected_body_max_bytes: int = _setting(65_536, "Bytes of a refused callback body kept.")
    rejected_max_count: int = _setting(
        10_000, "Refused callbacks kept for replay; the oldest are dropped beyond this."
    )
    rejected_max_bytes: int = _setting(
        64 * 1024 * 1024,
        "Total bytes of refused callback bodies kept; the oldest are dropped beyond this.",
    )
    retention_days: float = _setting(
        30.0,
        "Days finished jobs (with their events, idempotency keys, outbox entries) and refused"
        " bodies are kept; 0 keeps everything forever.",
    )

    # Webhooks
    webhook_urls: str = _setting(
        "", "Subscriptions: comma-separated URLs that receive every canonical event as JSON."
    )
    webhook_secret: str = _setting(
        "",
        "Standard Webhooks signing secret(s), `whsec_<base64>`; several (space-separated) during"
        " a rotation, each delivery then carries one signature per secret.",
        secret=True,
    )
    webhook_retry_schedule: str = _setting(
        "5,300,1800,7200,18000,36000,36000",
        "Seconds between delivery attempts (comma-separated, each ±20% jitter); past the last,"
        " the delivery is `dead`.",
    )
    webhook_allowed_networks: str = _setting(
        "",
        "CIDRs deliveries may reach although loopback/link-local/unspecified/multicast"
        " (e.g. `127.0.0.0/8` for tests).",
    )
    webhook_enabled: bool = _setting(True, "Fan out and send webhook deliveries in this process.")
    webhook_concurrency: int = _setting(64, "Delivery attempts in flight at once per process.")
    webhook_destination_concurrency: int = _setting(
        4, "Delivery attempts in flight at once per destination (scheme://host:port)."
    )
    webhook_connect_timeout_seconds: float = _setting(5.0, "Connect timeout of an attempt.")
    webhook_timeout_seconds: float = _setting(15.0, "Whole-attempt timeout (connect to answer).")
    webhook_breaker_failures: int = _setting(
        5, "Failures in a row after which a destination's circuit opens."
    )
    webhook_breaker_seconds: float = _setting(
        30.0, "How long an open circuit holds a destination's deliveries before one trial."
    )

    # Pulsar / TDMQ
    pulsar_url: str = _setting("", "Pulsar service URL (e.g. `pulsar://host:6650`); empty = off.")
    pulsar_token: str = _setting("", "Pulsar JWT (TDMQ token auth).", secret=True)
    pulsar_events_topic: str = _setting(
        "", "CI event topic(s): comma-separated names, or a regex in `re:...` form."
    )
    pulsar_subscription: str = _setting("cirelay", "Subscription name for CI events.")
    pulsar_subscription_type: Literal["Shared", "Failover", "Exclusive", "KeyShared"] = _setting(
        "Shared", "Shared for TDMQ Queue mode; Failover/Exclusive for Topic mode."
    )
    pulsar_max_redeliveries: int = _setting(
        5, "Redeliveries of an unparseable message before it goes to the dead-letter topic."
    )
    pulsar_redelivery_delay_seconds: float = _setting(
        1.0, "Delay before a negatively acknowledged (failed) message is delivered again."
    )
    pulsar_consumer_concurrency: int = _setting(
        64, "Messages of a Pulsar subscription handled at once per process."
    )
    pulsar_receiver_queue_size: int = _setting(
        1000, "Messages a Pulsar consumer prefetches; with the above, bounds memory."
    )
    pulsar_output_topic: str = _setting("", "Topic that receives every new canonical event.")
    pulsar_intake_topic: str = _setting("", "Topic from which batch jobs are enqueued.")

    # Emulator (`cirelay emulator`, `cirelay serve --sandbox`)
    emulator_host: str = _setting("127.0.0.1", "Address `cirelay emulator` binds.")
    emulator_port: int = _setting(8090, "Port `cirelay emulator` binds.")
    emulator_credentials: str = _setting(
        "",
        "Accepted keys as `id:key[,id:key]`; an `id:key:token` entry also requires that STS token.",
        secret=True,
    )
    emulator_objects_per_prefix: int = _setting(
        3, "Objects a Prefix/Manifest/UrlFile input expands to."
    )
    emulator_bucket_dir: str = _setting(
        "", "Directory whose files stand for the bucket's objects (overrides the count above)."
    )
    emulator_job_seconds: float = _setting(1.0, "How long each media job runs.")
    emulator_workers: int = _setting(4, "Media jobs running at once.")
    emulator_failure_rate: float = _setting(0.0, "Probability that a media job fails.")
    emulator_latency_ms: int = _setting(0, "Added latency on every API answer.")
    emulator_error_rate: float = _setting(0.0, "Probability of a 5xx InternalError answer.")
    emulator_throttle_rate: float = _setting(0.0, "Probability of a throttling (SlowDown) answer.")
    emulator_qps: float = _setting(0.0, "API calls per second allowed; 0 = unlimited.")
    emulator_duplicate_rate: float = _setting(0.0, "Probability a callback is delivered twice.")
    emulator_reorder: bool = _setting(False, "Deliver each batch's callbacks in reverse order.")
    emulator_drop_rate: float = _setting(0.0, "Probability a callback is never delivered.")
    emulator_callback_retries: int = _setting(
        3, "Retries of a failed callback delivery (URL or TDMQ) after the first attempt."
    )
    emulator_callback_retry_seconds: float = _setting(
        1.0, "Backoff base between callback delivery attempts (doubles each retry)."
    )
    emulator_lost_response_rate: float = _setting(
        0.0, "Probability that a call is carried out but answered 500 (the in-doubt case)."
    )
    emulator_seed: int = _setting(
        -1, "Seed of the emulator's random choices (ids, failures, faults); -1 = unseeded."
    )
    emulator_pulsar_url: str = _setting("", "Pulsar URL for TDMQ callback delivery.")
    emulator_pulsar_token: str = _setting("", "Pulsar token for TDMQ delivery.", secret=True)
    emulator_state: str = _setting("", "SQLite file that keeps emulator state across restarts.")

    @classmethod
    def load(cls, environ: Mapping[str, str], config_file: str | Path | None = None) -> Settings:
        """Build settings from a TOML file (optional) overlaid by ``CIRELAY_*`` variables."""
        raw: dict[str, tuple[str, Any]] = {}
        if config_file is not None:
            for key, value in _read_toml(Path(config_file)).items():
                name = key.lower().removeprefix(PREFIX.lower())
                raw[name] = (f"{config_file}: {key}", value)
        for key, value in environ.items():
            if key.startswith(PREFIX):
                raw[key[len(PREFIX) :].lower()] = (key, value)
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, (origin, value) in raw.items():
            if name not in known:
                raise SettingsError(origin, "unknown setting")
            values[name] = _coerce(origin, hints[name], value)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules that hold whatever the mode."""
        if not self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise SettingsError(
                env_name("database_url"),
                "must be sqlite:///PATH or postgresql://user:password@host:port/db",
            )
        for name in ("port", "admin_port", "emulator_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(env_name(name), "must be a port number 0-65535")
        for names, allowed, problem in _BOUNDS:
            for name in names:
                if not allowed(getattr(self, name)):
                    raise SettingsError(env_name(name), problem)
        self._check_webhooks()
        if self.admin_port and self.admin_port == self.port:
            raise SettingsError(env_name("admin_port"), "must differ from CIRELAY_PORT")
        if self.pulsar_url and not self.pulsar_url.startswith(("pulsar://", "pulsar+ssl://")):
            raise SettingsError(
                env_name("pulsar_url"), "must start with pulsar:// or pulsar+ssl://"
            )

    def _check_webhooks(self) -> None:
        for name, parse in (
            ("webhook_secret", lambda: self.webhook_keys),
            ("webhook_retry_schedule", lambda: self.webhook_schedule),
            ("webhook_allowed_networks", lambda: self.webhook_networks),
        ):
            try:
                parse()
            except ValueError as exc:
                raise SettingsError(env_name(name), str(exc)) from None
        for url in self.webhook_subscriptions:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(env_name("webhook_urls"), f"{url!r} is not an http(s) URL")
        if self.webhook_subscriptions and not self.webhook_keys:
            raise SettingsError(env_name("webhook_secret"), "is required with CIRELAY_WEBHOOK_URLS")

    @property
    def webhook_subscriptions(self) -> tuple[str, ...]:
        return tuple(u for u in (p.strip() for p in self.webhook_urls.split(",")) if u)

    @functools.cached_property
    def webhook_keys(self) -> tuple[bytes, ...]:
        return parse_secrets(self.webhook_secret)

    @functools.cached_property
    def webhook_schedule(self) -> tuple[float, ...]:
        try:
            delays = tuple(float(p) for p in self.webhook_retry_schedule.split(",") if p.strip())
        except ValueError:
            raise ValueError("must be comma-separated numbers of seconds") from None
        if any(not 0 <= delay < float("inf") for delay in delays):
            raise ValueError("delays must be 0 or more seconds")
        return delays

    @functools.cached_property
    def webhook_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.webhook_allowed_networks)

    def check_serve(self) -> None:
        """What `cirelay serve` needs to talk to the real CI (not checked in sandbox mode)."""
        for name in ("api_token", "callback_secret", "ci_secret_id", "ci_secret_key"):
            if not getattr(self, name):
                raise SettingsError(
                    env_name(name), "is required (or run `cirelay serve --sandbox`)"
                )

    @functools.cached_property  # read on every callback: derive the keys once
    def callback_keys(self) -> tuple[bytes, ...]:
        """Keys that verify callback tokens; the first signs new ones."""
        configured = (part.strip() for part in self.callback_secret.split(","))
        # Unset only outside `cirelay serve` (which requires it): a key of this process alone.
        return tuple(derive_key(part) for part in configured if part) or (_PROCESS_CALLBACK_KEY,)

    @property
    def callback_key(self) -> bytes:
        """The key that signs new callback tokens."""
        return self.callback_keys[0]

    @property
    def sqlite_path(self) -> str:
        return self.database_url.removeprefix("sqlite:///")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# Numeric settings by the bound they must respect: (names, test, what the error says).
_BOUNDS: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (
        (
            "workers",
            "database_pool_size",
            "ci_concurrency",
            "retry_max_attempts",
            "emulator_workers",
            "pulsar_consumer_concurrency",
            "pulsar_receiver_queue_size",
            "webhook_concurrency",
            "webhook_destination_concurrency",
            "webhook_breaker_failures",
            "max_connections",
            "max_events_per_callback",
        ),
        lambda value: value >= 1,
        "must be at least 1",
    ),
    (
        (
            "ci_rate_limit",
            "lease_seconds",
            "max_body_bytes",
            "max_xml_depth",
            "reconcile_seconds",
            "rejected_max_count",
            "rejected_max_bytes",
            "pulsar_redelivery_delay_seconds",
            "webhook_connect_timeout_seconds",
            "webhook_timeout_seconds",
            "idle_timeout_seconds",
            "body_timeout_seconds",
        ),
        lambda value: value > 0,
        "must be greater than 0",
    ),
    (
        (
            "reconcile_grace_seconds",
            "rejected_body_max_bytes",
            "retention_days",
            "emulator_callback_retries",
            "emulator_job_seconds",
            "emulator_callback_retry_seconds",
            "emulator_qps",
            "emulator_latency_ms",
            "emulator_objects_per_prefix",
            "pulsar_max_redeliveries",
            "webhook_breaker_seconds",
            "log_repeat_window_seconds",
        ),
        lambda value: value >= 0,
        "must be 0 or more",
    ),
    (
        (
            "emulator_failure_rate",
            "emulator_error_rate",
            "emulator_throttle_rate",
            "emulator_duplicate_rate",
            "emulator_drop_rate",
            "emulator_lost_response_rate",
        ),
        lambda value: 0.0 <= value <= 1.0,
        "must be a probability between 0 and 1",
    ),
)


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def reference() -> list[tuple[str, str, str, str]]:
    """(variable, type, default, description) for every setting: the README's reference table."""
    rows = []
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        default = "" if f.metadata["secret"] else repr(f.default)
        rows.append((env_name(f.name), _type_name(hints[f.name]), default, f.metadata["doc"]))
    return rows


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(str(path), f"cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(path), f"invalid TOML: {exc}") from exc
    return data


def _coerce(origin: str, tp: Any, value: Any) -> Any:
    if typing.get_origin(tp) is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SettingsError(origin, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise SettingsError(origin, f"must be true or false; got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise SettingsError(origin, f"must be a number; got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            kind = "an integer" if tp is int else "a number"
            raise SettingsError(origin, f"must be {kind}; got {value!r}") from None
    if not isinstance(value, str):
        raise SettingsError(origin, f"must be a string; got {value!r}")
    return value
