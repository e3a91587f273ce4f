"""Runtime settings, read from the environment (and a `.env` file when present)."""

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    # The service's Kafka user (SASL/SCRAM-SHA-512; shared/kafka_security.py). Empty: the
    # broker is plaintext, as the shared development broker is.
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    database_url: str = "postgresql://postgres@127.0.0.1:15432/cloudwallet"
    # Prepended to every topic name: lets tests and parallel environments share one broker.
    topic_prefix: str = ""
    # Prepended to every consumer group id, for the same reason.
    group_prefix: str = ""

    # Records per consumer batch at most. Under a backlog, larger batches cost less per
    # record (billing's usage: fewer, fuller wallet entries and charge messages per event);
    # at a steady rate a batch holds what arrived, so this costs no latency.
    consumer_batch_size: int = Field(default=5000, ge=1)
    # How long an idle poll waits for records. Records are handed over as soon as they
    # arrive, so this costs no latency; it only sets how often an idle consumer wakes up.
    consumer_batch_timeout_ms: int = Field(default=100, ge=1)
    outbox_batch_size: int = Field(default=5000, ge=1)
    outbox_poll_interval_s: float = Field(default=0.2, gt=0)
    db_pool_max_size: int = Field(default=10, ge=1)

    log_level: str = "INFO"
    log_json: bool = True

    wallet_http_port: int = 8101
    provisioning_http_port: int = 8102
    metering_http_port: int = 8103
    billing_http_port: int = 8104
    vcenter_simulator_http_port: int = 8105
    portal_http_port: int = 8106

    default_currency: str = "ZAR"
    # A reservation with no provisioning outcome by then expires and its funds return.
    hold_ttl_seconds: int = Field(default=3600, ge=1)
    low_balance_threshold_minor: int = Field(default=10_000, ge=0)
    # The payment gateway's webhook secret (Standard Webhooks, `whsec_<base64>`), and the
    # one before it while a rotation is under way (both are accepted; empty: none).
    payment_webhook_secret: str = "whsec_ZGV2LXdlYmhvb2stc2VjcmV0LWNoYW5nZS1tZSE="
    payment_webhook_previous_secret: str = ""

    # Requests per second each API key may make on average, and in a burst (then 429).
    api_rate_per_s: float = Field(default=100, gt=0)
    api_rate_burst: int = Field(default=200, ge=1)
    # Requests handled at once per process; more are refused with 503 and Retry-After.
    max_requests_in_flight: int = Field(default=1024, ge=1)
    # Larger request bodies are refused with 413 before they are read.
    max_request_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_topup_minor: int = Field(default=100_000_000, ge=1)

    # No answer from vCenter by then: the provisioning request fails and funds are released.
    vcenter_timeout_seconds: int = Field(default=900, ge=1)
    # How often provisioning sends the reservations of requests still awaiting funds again
    # (their first send goes straight to Kafka, not through the outbox).
    reservation_resend_interval_s: float = Field(default=60, gt=0)
    # "wall": ticks follow the wall clock (production). "ticks": a simulation drives time by
    # ticks alone, in the past or the future; see shared/event_time.py.
    event_clock: Literal["wall", "ticks"] = "wall"
    # Inbox rows (ids of messages consumed) are deleted this long after consumption, and a
    # message dated more than (retention - margin) before the consumer's event clock is
    # refused as a dead letter: the retention must exceed the longest retention of the
    # topics an inbox guards (30 days), the margin the producers' clock skew (shared/retention.py).
    inbox_retention_days: float = Field(default=45, gt=0)
    inbox_refusal_margin_days: float = Field(default=3, ge=0)
    inbox_prune_interval_s: float = Field(default=300, gt=0)
    inbox_prune_batch: int = Field(default=1000, ge=1)
    # Rate card versions after the default one: a JSON list (shared.pricing.rate_card_of).
    rate_cards: str = ""

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        return f"{self.group_prefix}{name}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
