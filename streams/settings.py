"""The one settings object: every default lives here and only here.

Environment variables use the prefix ``CONVEYOR_`` and ``__`` between nested
groups, e.g. ``CONVEYOR_KAFKA__BOOTSTRAP_SERVERS`` or
``CONVEYOR_JOBS__ASSET_PROCESS__CONCURRENCY``. Helm values map to these 1:1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from handlers.crm.crypto import Keyring
from streams.redact import mask_shapes, url_password

ENV_PREFIX = "CONVEYOR_"
ENV_NESTED_DELIMITER = "__"

_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[^/@?#\s:\[\]]+)(:\d{1,5})?/?", re.IGNORECASE)


class _Group(BaseModel):
    """A nested settings group: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Group):
    """Broker connection, consumer group and topic layout."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port]")
    group_id: str = Field("conveyor", description="consumer group (also the Faust app id)")
    topic_partitions: int = Field(6, ge=1, description="partitions for topics we create")
    replication_factor: int = Field(1, ge=1, description="replication for topics we create")
    dlq_topic: str = Field("jobs.dlq", min_length=1)
    control_topic: str = Field(
        "conveyor.control",
        min_length=1,
        description="compacted, 1 partition: pauses and resumes every worker follows"
        " (conveyor pause; docs/CONSOLE.md)",
    )
    status_topic: str = Field(
        "conveyor.status",
        min_length=1,
        description="compacted, 1 partition: each worker's status report (conveyor workers)",
    )
    retry_suffix: str = Field(".retry", min_length=1)
    deferred_suffix: str = Field(
        ".deferred", min_length=1, description="topic of records set aside for fair share"
    )
    commit_interval_s: float = Field(0.5, gt=0, le=60)
    session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a member silent this long (e.g. SIGKILLed) leaves the group and its"
        " partitions move (docs/RELIABILITY.md)",
    )
    heartbeat_interval_s: float = Field(
        3.0, gt=0, description="how often a member tells the group it lives; < session_timeout_s"
    )
    metadata_max_age_s: float = Field(
        30.0,
        ge=1,
        le=300,
        description="the consumer refreshes topic metadata at least this often: a change"
        " (or partitions an assignment missed) leads to a rebalance within it",
    )
    buffer_per_partition: int = Field(64, ge=1, description="prefetched messages per partition")
    max_poll_records: int = Field(500, ge=1, description="records handed over per fetch")
    backlog_records: int = Field(
        1000,
        ge=1,
        description="records ready to run a job type holds before its partitions pause; "
        "with ordering key, a partition also pauses alone when this many of its records "
        "wait behind busy keys",
    )
    backlog_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="bytes a job type holds before its partitions pause"
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="broker/topic limit")
    max_job_bytes: int = Field(1024 * 1024, ge=1024, description="larger jobs are dead-lettered")
    # Connection security, applied to every Kafka client (streams/kafka_config.py).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="SSL and SASL_SSL encrypt with TLS; SASL_PLAINTEXT and SASL_SSL log in"
        " with sasl_mechanism",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="with SASL_PLAINTEXT or SASL_SSL (OAUTHBEARER: not supported)"
    )
    sasl_username: SecretStr | None = Field(
        None,
        description="required with SASL_*; kept out of `conveyor config`, not masked in logs",
        json_schema_extra={"mask_in_logs": False},
    )
    sasl_password: SecretStr | None = Field(None, description="required with SASL_*")
    ssl_ca_file: str | None = Field(
        None,
        description="PEM file of the CA(s) that sign the brokers' certificates, with SSL or"
        " SASL_SSL; unset: the system's CAs",
    )
    ssl_cert_file: str | None = Field(
        None, description="PEM client certificate for mutual TLS (with ssl_key_file)"
    )
    ssl_key_file: str | None = Field(None, description="PEM private key of ssl_cert_file")
    ssl_key_password: SecretStr | None = Field(None, description="when ssl_key_file is encrypted")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        """Refuse credentials the protocol would not use, half a key pair, a late heartbeat.

        Missing credentials are reported when a Kafka client is made
        (streams/kafka_config.py): a process that never talks to Kafka (the
        migrate hook) is given none.
        """
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        unused = [
            name
            for name, used in (
                ("sasl_username", sasl),
                ("sasl_password", sasl),
                ("ssl_ca_file", tls),
                ("ssl_cert_file", tls),
                ("ssl_key_file", tls),
                ("ssl_key_password", tls),
            )
            if getattr(self, name) is not None and not used
        ]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} set, but security_protocol"
                f" {self.security_protocol} does not use it"
            )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together (mutual TLS)")
        if self.ssl_key_password is not None and self.ssl_key_file is None:
            raise ValueError("ssl_key_password is set without ssl_key_file")
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be below"
                f" session_timeout_s ({self.session_timeout_s:g})"
            )
        return self


class PostgresSettings(_Group):
    """Database connection and pool."""

    dsn: SecretStr = SecretStr("postgresql://conveyor:conveyor@127.0.0.1:5432/conveyor")
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(60.0, gt=0)


class JobPolicy(_Group):
    """Per-job-type policy: where it comes from and how hard to try."""

    topic: str = Field(min_length=1)
    enabled: bool = True
    concurrency: int = Field(4, ge=1, le=1024)
    timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    in_place_max_s: float = Field(5.0, ge=0, description="waits up to this long retry in place")
    max_crashes: int = Field(
        3,
        ge=0,
        description="worker deaths while running one job before it is dead-lettered "
        "unrun (stage crashed; the last death while it ran alone); 0 turns the guard off, "
        "1 is refused",
    )
    ordering: Literal["none", "key"] = Field(
        "none",
        description="key: records with the same Kafka key run one at a time, in offset "
        "order (other keys in parallel); none: any record may run beside any other",
    )
    fairness: Literal["none", "organization"] = Field(
        "none",
        description="organization: organizations start jobs in turn (fairness.weights), and "
        "past a full read-ahead an organization's excess is set aside to <topic>.deferred",
    )

    @field_validator("max_crashes")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise ValueError(
                "1 would dead-letter every job that was running beside any crash; "
                "use 2 or more (the last death counts only while the job ran alone), "
                "or 0 to turn the guard off"
            )
        return value


class JobsSettings(_Group):
    """One policy per job type of the catalog."""

    # Documents and graphs are the bulk uploads of one organization at a time:
    # organizations take turns (docs/RELIABILITY.md, "Fair share").
    asset_process: JobPolicy = JobPolicy(
        topic="jobs.asset.process", timeout_s=300.0, fairness="organization"
    )
    # One job sends all of an asset's chunks to the LLM, batch by batch: a
    # large document takes minutes, so 60 s would time it out every attempt.
    knowledge_graph_extract: JobPolicy = JobPolicy(
        topic="jobs.knowledge_graph.extract", timeout_s=900.0, fairness="organization"
    )
    # The CRM and message topics are keyed by connection or lead: a key's jobs
    # apply in the order they were published.
    crm_sync_pipelines: JobPolicy = JobPolicy(
        topic="jobs.crm.sync_pipelines", concurrency=2, ordering="key"
    )
    crm_webhook: JobPolicy = JobPolicy(topic="jobs.crm.webhook", ordering="key")
    # A send whose outcome is unknown is looked up before any resend: a lookup
    # and a post each hold the message's lease (crm.message_lease_s), and the
    # waits for a lease or a settling post are retries. They happen in place,
    # so later messages to the same lead do not overtake the one being resolved.
    message_send: JobPolicy = JobPolicy(
        topic="jobs.message.send",
        timeout_s=150.0,
        max_attempts=20,
        in_place_max_s=130.0,
        ordering="key",
    )
    probe: JobPolicy = JobPolicy(topic="jobs.probe", enabled=False, concurrency=8, timeout_s=10.0)


class FairnessSettings(_Group):
    """Fair share between organizations, for job types with ``fairness: organization``."""

    weights: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="'organization=weight,...' (default weight 1): an organization's turns "
        "relative to the others'",
    )
    max_running_per_organization: int = Field(
        0, ge=0, description="jobs of one organization running at once per job type; 0: no cap"
    )

    @field_validator("weights", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: list[str]) -> list[str]:
        for entry in value:
            org, sep, weight = entry.rpartition("=")
            try:
                ok = bool(sep and org.strip()) and float(weight) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{entry!r}: expected organization=weight, the weight above 0")
        return value

    @property
    def weight_map(self) -> dict[str, float]:
        """Organization -> weight."""
        pairs = (entry.rpartition("=") for entry in self.weights)
        return {org.strip(): float(weight) for org, _, weight in pairs}


class DlqMirrorSettings(_Group):
    """The agent that mirrors the dead-letter topic into Postgres ``worker_dlq``."""

    enabled: bool = True
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0, description="cap while Postgres is unreachable")
    retention_days: int = Field(
        30,
        ge=1,
        description="conveyor dlq purge deletes dead letters mirrored longer ago than this"
        " (they hold job payloads: webhook bodies, message texts); run it daily",
    )


class WorkerSettings(_Group):
    """Process-level behaviour: shutdown and rebalance bounds."""

    drain_timeout_s: float = Field(25.0, gt=0, description="< Helm terminationGracePeriodSeconds")
    hard_exit_after_s: float = Field(10.0, gt=0, description="extra time after the drain")
    rebalance_drain_timeout_s: float = Field(10.0, ge=0)
    preflight_wait_s: float = Field(
        30.0,
        ge=0,
        description="how long a starting worker tries again to reach Kafka and Postgres before "
        "it exits 1 (a restart or failover passes without a crash loop); a refused login, a "
        "bad certificate or a missing topic or table exits at once",
    )
    isolation_block_s: float = Field(
        10.0,
        gt=0,
        description="how long a crash suspect waiting to run alone may stop new jobs from "
        "starting; then they start again for 3x as long before it asks again",
    )
    service_name: str = Field(
        "conveyor", description="service.name of the worker's traces (tracing.enabled)"
    )
    metrics_port: int = Field(
        9102, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0 disables them"
    )
    metrics_host: str = Field("0.0.0.0", description="address the metrics port listens on")


class FleetSettings(_Group):
    """What each worker tells the fleet: its status report on ``kafka.status_topic``."""

    report_interval_s: float = Field(
        5.0,
        ge=0.5,
        le=300,
        description="seconds between a worker's status reports; silent for 3 intervals: gone",
    )
    forget_after_s: float = Field(
        3600.0, gt=0, description="a worker gone this long is no longer listed"
    )


ConsoleRole = Literal["viewer", "operator"]
CONSOLE_ROLES = ("viewer", "operator")


class ConsoleSettings(_Group):
    """``conveyor console``: the operations web console (docs/CONSOLE.md)."""

    host: str = Field(
        "127.0.0.1", description="address it listens on; loopback unless told otherwise"
    )
    port: int = Field(9180, ge=1, le=65535)
    tokens: SecretStr | None = Field(
        None,
        description="'name:role:token,...' logins (role viewer or operator; tokens of 24+"
        " characters); from a Secret",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses or CIDRs of authenticating proxies whose proxy_user_header is"
        " believed; empty: no proxy login",
    )
    proxy_user_header: str = Field(
        "X-Forwarded-User", min_length=1, description="the user name a trusted proxy sends"
    )
    proxy_operators: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="proxy users with the operator role ('*': all); the others are viewers",
    )
    session_key: SecretStr | None = Field(
        None,
        description="signs session cookies (32+ characters); unset: a random key per process"
        " (a restart logs everyone out)",
    )
    session_ttl_s: float = Field(12 * 3600.0, gt=0, description="a login lasts this long")
    cookie_secure: bool = Field(
        False, description="mark cookies Secure (set it when the console is served over HTTPS)"
    )
    page_size: int = Field(50, ge=10, le=500, description="dead letters per page")
    sample_interval_s: float = Field(
        30.0,
        ge=1,
        description="how often the console reads the group's committed offsets (rates, lag)",
    )

    @field_validator("trusted_proxies", "proxy_operators", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value

    def problems(self) -> list[str]:
        """Why ``conveyor console`` cannot start with these settings (checked there: the
        worker never reads the console's secrets, and is not given them)."""
        found = []
        if self.tokens is not None:
            try:
                console_logins(self.tokens.get_secret_value())
            except ValueError as exc:
                found.append(f"CONVEYOR_CONSOLE__TOKENS: {exc}")
        elif not self.trusted_proxies:
            found.append(
                "nobody could log in: set CONVEYOR_CONSOLE__TOKENS (name:role:token,...) or"
                " CONVEYOR_CONSOLE__TRUSTED_PROXIES"
            )
        if self.session_key is not None and len(self.session_key.get_secret_value()) < 32:
            found.append("CONVEYOR_CONSOLE__SESSION_KEY: must be at least 32 characters")
        return found


def console_logins(text: str) -> dict[str, tuple[str, str]]:
    """``name:role:token,...`` as {token: (name, role)}; a ValueError names what is wrong."""
    logins: dict[str, tuple[str, str]] = {}
    for index, entry in enumerate(part.strip() for part in text.split(",")):
        name, _, rest = entry.partition(":")
        role, _, token = rest.partition(":")
        where = f"console.tokens entry {index + 1}"
        if not name or not token:
            raise ValueError(f"{where}: not name:role:token")
        if role not in CONSOLE_ROLES:
            raise ValueError(f"{where}: role must be viewer or operator")
        if len(token) < 24:
            raise ValueError(f"{where}: the token must be at least 24 characters")
        if token in logins:
            raise ValueError(f"{where}: the same token twice")
        logins[token] = (name, role)
    return logins


class HttpSettings(_Group):
    """Outbound HTTP (asset storage and other plain fetches)."""

    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    max_download_bytes: int = Field(50 * 1024 * 1024, ge=1)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host, address or CIDR, with :port or :* for other ports than 80/443,"
        " let through the SSRF guard; *:port admits a port on public hosts (docs/SECURITY.md)",
    )
    storage_auth_header: SecretStr | None = None
    storage_auth_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="scheme://host[:port] origins that get storage_auth_header;"
        " no other host, and no redirect away from them, ever does",
    )
    user_agent: str = "conveyor/0.1"

    @field_validator("allowed_hosts", "storage_auth_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_allowlist(cls, value: list[str]) -> list[str]:
        from handlers.assets.netguard import parse_entry  # imported only when validating

        for entry in value:
            parse_entry(entry)
        return value

    @field_validator("storage_auth_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin like https://storage.example.com")
        return value

    @model_validator(mode="after")
    def _credential_needs_origins(self) -> HttpSettings:
        if self.storage_auth_header is not None and not self.storage_auth_origins:
            raise ValueError(
                "storage_auth_header is set but storage_auth_origins is empty: name the"
                " storage origins the credential may be sent to"
            )
        return self


class EmbeddingSettings(_Group):
    """Embedding provider: ``hash`` (local, lexical) or ``openai`` (HTTP)."""

    provider: Literal["hash", "openai"] = "hash"
    base_url: str = "https://openrouter.ai/api/v1"
    api_key: SecretStr | None = None
    model: str = "openai/text-embedding-3-small"
    dimensions: int = Field(256, ge=8, le=8192)
    batch_size: int = Field(64, ge=1, le=2048)
    requests_per_minute: int = Field(600, ge=1)
    tokens_per_minute: int = Field(1_000_000, ge=1)
    org_requests_per_minute: int = Field(120, ge=1)
    org_tokens_per_minute: int = Field(200_000, ge=1)
    org_tokens_per_day: int = Field(
        50_000_000, ge=0, description="per organization and UTC day (openai provider); 0: no cap"
    )
    timeout_s: float = Field(30.0, gt=0, description="per HTTP request; a timeout is retried")
    max_retries: int = Field(4, ge=0, description="in-job retries of a request, then retryable")
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(20.0, gt=0, description="longer waits go back to the runner")


class LlmSettings(_Group):
    """Chat-completions provider for knowledge-graph extraction (off when no key)."""

    base_url: str = "https://openrouter.ai/api/v1"
    api_key: SecretStr | None = None
    model: str = "openai/gpt-4o-mini"
    requests_per_minute: int = Field(60, ge=1)
    max_output_tokens: int = Field(4096, ge=16, description="max_tokens sent with every call")
    org_tokens_per_day: int = Field(
        5_000_000, ge=0, description="per organization and UTC day, input + max_tokens; 0: no cap"
    )
    timeout_s: float = Field(60.0, gt=0, description="per HTTP request; a timeout is retried")
    max_retries: int = Field(3, ge=0, description="in-job retries of a request, then retryable")
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(20.0, gt=0, description="longer waits go back to the runner")
    batch_chars: int = Field(12_000, ge=500, description="chunk text sent per extraction call")
    output_attempts: int = Field(3, ge=1, description="asks per batch before invalid output fails")


class CrmSettings(_Group):
    """CRM connections (Kommo): secrets at rest, the API client and its per-account rate limit."""

    keyring: SecretStr | None = Field(
        None,
        description="'id:base64key,...' (32-byte AES keys); the first encrypts, all decrypt",
    )
    allowed_account_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*.kommo.com"],
        description="Kommo account hosts that may receive secrets and tokens: host, *.domain or"
        " address, with :port or :* for another port than 443 (docs/KOMMO.md)",
    )
    requests_per_second: float = Field(
        7.0, gt=0, description="per Kommo account and worker; Kommo allows 7"
    )
    min_requests_per_second: float = Field(0.5, gt=0, description="floor of the adaptive limit")
    rate_decrease_factor: float = Field(
        0.85, gt=0, lt=1, description="the adaptive limit is multiplied by this on a 429"
    )
    rate_increase_per_s: float = Field(
        0.05,
        gt=0,
        description="requests/s the limit regains per second without a 429 "
        "(a whole request every 20 s: workers sharing an account probe slowly)",
    )
    timeout_s: float = Field(20.0, gt=0, description="per HTTP request to Kommo")
    max_retries: int = Field(
        3, ge=0, description="in-job retries of a read after a 5xx or timeout, then retryable"
    )
    rate_limit_wait_s: float = Field(
        20.0, ge=0, description="429 waiting a job spends in place before it yields"
    )
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(10.0, gt=0, description="longer waits go back to the runner")
    token_refresh_margin_s: float = Field(
        60.0, ge=0, description="refresh an access token expiring within this"
    )
    page_limit: int = Field(250, ge=1, le=250, description="entities per list page (Kommo: ≤ 250)")
    sync_lease_s: float = Field(
        300.0, gt=0, description="a pipeline sync's claim on its connection if its worker dies"
    )
    message_lease_s: float = Field(
        60.0,
        gt=0,
        description="a message.send run's claim on its message (lookup or POST); > timeout_s",
    )
    message_settle_s: float = Field(
        60.0,
        ge=0,
        description="how long after an unanswered POST its note may still appear in Kommo",
    )
    webhook_max_age_s: float = Field(
        86_400.0,
        gt=0,
        description="a webhook delivery signed longer ago than this is refused as a possible"
        " replay; keep it above the time a crm.webhook job may wait in Kafka and retries",
    )

    @field_validator("allowed_account_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_account_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        from handlers.providers.kommo_accounts import parse_entry  # only when validating

        for entry in value:
            parse_entry(entry)
        return value

    @field_validator("keyring")
    @classmethod
    def _valid_keyring(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            Keyring.parse(value.get_secret_value())  # KeyringError is a ValueError
        return value


class ChunkingSettings(_Group):
    """Chunk size and overlap, in characters."""

    size: int = Field(600, ge=50)
    overlap: int = Field(120, ge=0)


class ExtractSettings(_Group):
    """Text extraction: its process pool and the guards applied to every document."""

    workers: int = Field(2, ge=1, le=64, description="extraction processes (about one per core)")
    time_limit_s: float = Field(
        120.0, gt=0, description="per document; keep below the asset.process timeout"
    )
    max_pages: int = Field(2000, ge=1, description="longer PDFs are refused")
    max_unpacked_bytes: int = Field(
        200 * 1024 * 1024, ge=1024 * 1024, description="DOCX size once decompressed"
    )
    max_compression_ratio: float = Field(100.0, ge=2, description="per DOCX part of 1 MiB or more")
    max_chars: int = Field(
        10_000_000, ge=1000, description="characters of text per document; longer ones are refused"
    )
    max_chunks: int = Field(
        25_000, ge=10, description="chunks per document (each one is embedded); more are refused"
    )
    memory_limit_bytes: int = Field(
        512 * 1024 * 1024,
        ge=128 * 1024 * 1024,
        description="address space of each extraction process; a document needing more fails",
    )


class SentrySettings(_Group):
    """Sentry alerting; disabled unless a DSN is set."""

    dsn: SecretStr | None = None
    environment: str = "development"


class LoggingSettings(_Group):
    """structlog output."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    library_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="floor for Faust, mode and aiokafka loggers"
    )


_ATTRIBUTE = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """``key=value,key2=value2`` (OpenTelemetry's format for resource attributes and
    exporter headers) as a dict; later keys win. ValueError names the bad entry's
    position, never its text (a header may be a secret)."""
    pairs: dict[str, str] = {}
    for position, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not _ATTRIBUTE.match(key):
            raise ValueError(f"{what}: entry {position} is not key=value")
        pairs[key] = value
    return pairs


class TracingSettings(_Group):
    """OpenTelemetry traces, exported over OTLP/HTTP; off by default (docs/OPERATIONS.md)."""

    enabled: bool = Field(
        False, description="off: no OpenTelemetry module is imported and nothing is recorded"
    )
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces",
        description="the collector's OTLP/HTTP traces URL (its path included, usually /v1/traces)",
    )
    headers: SecretStr | None = Field(
        None,
        description="sent with every export, 'name=value,name2=value2' (e.g."
        " 'authorization=Bearer ...')",
    )
    sampling_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of new traces recorded; a job whose producer sent a trace context"
        " follows the producer's decision (parent-based)",
    )
    resource_attributes: str | None = Field(
        None,
        description="'key=value,...' added to every span's resource (service.name comes from"
        " worker.service_name unless set here); the chart adds the pod's identity",
    )
    export_timeout_s: float = Field(10.0, gt=0, description="per export request")
    queue_spans: int = Field(
        8192, ge=64, description="finished spans waiting for export; past it new ones are dropped"
    )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("not an http(s) URL")
        return value

    @field_validator("resource_attributes")
    @classmethod
    def _attributes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_pairs(value, "resource_attributes")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_pairs(value.get_secret_value(), "headers")
        return value


class Settings(BaseSettings):
    """Every configurable value of the worker."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        nested_model_default_partial_update=True,
        # A bad secret (a malformed keyring, a DSN) is never echoed in an error.
        hide_input_in_errors=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    jobs: JobsSettings = JobsSettings()
    worker: WorkerSettings = WorkerSettings()
    dlq_mirror: DlqMirrorSettings = DlqMirrorSettings()
    fairness: FairnessSettings = FairnessSettings()
    fleet: FleetSettings = FleetSettings()
    console: ConsoleSettings = ConsoleSettings()
    http: HttpSettings = HttpSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    llm: LlmSettings = LlmSettings()
    crm: CrmSettings = CrmSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    extract: ExtractSettings = ExtractSettings()
    sentry: SentrySettings = SentrySettings()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()


class ConfigError(Exception):
    """Invalid configuration; ``lines`` name each bad variable and what is wrong."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that sets the field at ``loc``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part).upper() for part in loc)


def stray_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``CONVEYOR_`` variable that looks like a setting but sets nothing.

    pydantic-settings ignores a variable whose first segment names no group
    (``CONVEYOR_KAFAK__…``), and one with a single underscore after the group
    (``CONVEYOR_KAFKA_BOOTSTRAP_SERVERS``); each would silently keep a default.
    Variables of the dev scripts that share the prefix (``CONVEYOR_KAFKA_PORT``,
    ``CONVEYOR_SERVICES_DIR``) match no field and pass.
    """
    groups = {name.upper(): model for name, model in Settings.model_fields.items()}
    lines = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        group, delimiter, _ = rest.partition(ENV_NESTED_DELIMITER)
        if delimiter:
            if group.upper() not in groups:
                lines.append(f"{name}: unknown settings group {group!r}")
            continue
        for group_name, field in groups.items():
            model = field.annotation
            candidate = rest.upper().removeprefix(group_name + "_")
            if (
                candidate != rest.upper()
                and isinstance(model, type)
                and issubclass(model, BaseModel)
                and candidate.lower() in model.model_fields
            ):
                suggestion = env_name((group_name.lower(), candidate.lower()))
                lines.append(f"{name}: not a setting; did you mean {suggestion}?")
    return lines


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise ConfigError with one line per problem."""
    lines = stray_variables(os.environ)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines += [f"{env_name(err['loc'])}: {err['msg']}" for err in exc.errors()]
    except SettingsError as exc:
        lines.append(str(exc))
    if lines:
        raise ConfigError(lines) from None
    return settings


def forget_environment() -> list[str]:
    """Drop every ``CONVEYOR_*`` variable, in any case, from this process's environment;
    return their names.

    Called once the settings are read (they are read once, at start): the
    settings object is then the only holder of the secrets, and no child
    process — above all the extraction processes that parse hostile files —
    inherits them. pydantic-settings reads names case-insensitively
    (``conveyor_crm__keyring`` sets the keyring), so they are cleared so too.
    The environment block the process started with stays in its memory
    (``/proc/<pid>/environ``): the worker is non-dumpable for that
    (handlers/cpu_pool.py).
    """
    names = [name for name in os.environ if name.upper().startswith(ENV_PREFIX)]
    for name in names:
        del os.environ[name]
    return names


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration with secrets masked, for ``conveyor config``.

    Secret settings show as a mask; so does a password written inside any
    URL setting (e.g. ``https://user:password@proxy/v1`` as a base URL).
    """

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return mask_shapes(value) if isinstance(value, str) else value

    dumped: dict[str, Any] = walk(json.loads(settings.model_dump_json()))
    return dumped


def secret_values(settings: Settings) -> list[str]:
    """Every configured secret, so logs and dead-letter records can mask them."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            extra = info.json_schema_extra
            if isinstance(extra, dict) and extra.get("mask_in_logs") is False:
                continue  # secret in `conveyor config`, but a common word in log lines
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
                value = value.get_secret_value()
            if isinstance(value, str) and (password := url_password(value)):
                found.append(password)  # e.g. a DSN's password, alone in an error message
            elif isinstance(value, BaseModel):
                walk(value)

    walk(settings)
    return found
