"""The Kafka topic map: every topic the system uses, in one place.

The key says which ordering a topic guarantees: all messages with one key land on one
partition, so per-wallet (or per-VM) order holds while partitions spread the load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

DAY_MS = 24 * 3600 * 1000
# `TOPIC_PARTITIONS="vcenter.events=12,metering.usage=12"`: partition counts other than the
# defaults below, read once at start by every process (all must agree: billing checks
# metering's watermarks per vcenter.events partition, metering sends one per metering.usage
# partition). Kafka only adds partitions, and adding some moves keys: see
# docs/operations.md for what that means for key order and how to change a count safely.
PARTITIONS_SETTING = "TOPIC_PARTITIONS"
# One partition on purpose: clock ticks and dead letters are ordered as a whole.
SINGLE_PARTITION = frozenset({"clock.ticks", "deadletter"})


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    key: str
    partitions: int
    retention_ms: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    description: str


PORTAL_VM_REQUESTS = Topic(
    "portal.vm-requests", "organisation_id", 6, 7 * DAY_MS,
    ("portal",), ("provisioning",),
    "VM requests from portals that publish directly instead of calling the HTTP API.",
)
PROVISIONING_REQUESTS = Topic(
    "provisioning.requests", "wallet_id", 6, 7 * DAY_MS,
    ("provisioning",), ("wallet",),
    "Priced provisioning and resize requests asking the wallet to reserve funds.",
)
WALLET_DECISIONS = Topic(
    "wallet.decisions", "wallet_id", 6, 7 * DAY_MS,
    ("wallet",), ("provisioning",),
    "The wallet's answer to each reservation request: funds reserved (a hold) or rejected.",
)
PROVISIONING_OUTCOMES = Topic(
    "provisioning.outcomes", "wallet_id", 6, 7 * DAY_MS,
    ("provisioning",), ("wallet",),
    "How each reserved request ended (succeeded, failed, cancelled) and VMs whose holds end.",
)
VCENTER_COMMANDS = Topic(
    "vcenter.commands", "vm_id", 6, 7 * DAY_MS,
    ("provisioning",), ("vcenter-hooks",),
    "Commands to vCenter: create, resize, power off (suspend), power on (resume), delete.",
)
VCENTER_EVENTS = Topic(
    "vcenter.events", "vm_id", 6, 30 * DAY_MS,
    ("vcenter-hooks", "clock"), ("metering", "provisioning"),
    "VM lifecycle events from vCenter hooks, plus a clock tick written to every partition.",
)
CLOCK_TICKS = Topic(
    "clock.ticks", "none (one partition)", 1, 30 * DAY_MS,
    ("clock",), ("wallet", "provisioning"),
    "Event-time clock: hold expiry, saga timeouts and month ends follow it, not the wall clock.",
)
METERING_USAGE = Topic(
    "metering.usage", "wallet_id", 6, 30 * DAY_MS,
    ("metering",), ("billing",),
    "Hourly usage per VM (and corrections), plus metering watermarks in every partition.",
)
BILLING_DEBITS = Topic(
    "billing.debits", "wallet_id", 6, 30 * DAY_MS,
    ("billing",), ("wallet",),
    "Rated usage to debit from a wallet, and credits from usage corrections.",
)
WALLET_TOPUPS = Topic(
    "wallet.topups", "wallet_id", 6, 30 * DAY_MS,
    ("billing",), ("wallet",),
    "Settled payments (auto top-up) to credit to a wallet.",
)
WALLET_EVENTS = Topic(
    "wallet.events", "wallet_id", 6, 30 * DAY_MS,
    ("wallet",), ("provisioning", "billing"),
    "Wallet facts others act on: opened, low balance, depleted, funds restored, topped up,"
    " refunded, debits applied.",
)
BILLING_EVENTS = Topic(
    "billing.events", "wallet_id", 6, 365 * DAY_MS,
    ("billing",), ("portal",),
    "Month closed per wallet (reconciliation), invoices issued, auto top-up declined.",
)
DEAD_LETTER = Topic(
    "deadletter", "source topic", 1, 30 * DAY_MS,
    ("wallet", "provisioning", "metering", "billing"), ("operators",),
    "Messages a consumer could not accept, each with the reason and where it came from.",
)

def partition_counts(setting: str) -> dict[str, int]:
    """`name=count,...` parsed and checked against the topic map's names."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in setting.split(","))):
        name, _, count = part.partition("=")
        name = name.strip()
        if name not in _DEFAULTS:
            raise ValueError(f"{PARTITIONS_SETTING}: no topic {name!r} in the topic map")
        if name in SINGLE_PARTITION:
            raise ValueError(f"{PARTITIONS_SETTING}: {name} has one partition by design")
        if not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"{PARTITIONS_SETTING}: {name} needs a positive partition count, "
                             f"not {count!r}")
        counts[name] = int(count)
    return counts


_DEFAULTS: dict[str, Topic] = {t.name: t for t in (
    PORTAL_VM_REQUESTS, PROVISIONING_REQUESTS, WALLET_DECISIONS, PROVISIONING_OUTCOMES,
    VCENTER_COMMANDS, VCENTER_EVENTS, CLOCK_TICKS, METERING_USAGE, BILLING_DEBITS,
    WALLET_TOPUPS, WALLET_EVENTS, BILLING_EVENTS, DEAD_LETTER)}
_COUNTS = partition_counts(os.environ.get(PARTITIONS_SETTING, ""))
if _COUNTS:
    PORTAL_VM_REQUESTS, PROVISIONING_REQUESTS, WALLET_DECISIONS, PROVISIONING_OUTCOMES, \
        VCENTER_COMMANDS, VCENTER_EVENTS, CLOCK_TICKS, METERING_USAGE, BILLING_DEBITS, \
        WALLET_TOPUPS, WALLET_EVENTS, BILLING_EVENTS, DEAD_LETTER = (
            replace(t, partitions=_COUNTS.get(t.name, t.partitions))
            for t in _DEFAULTS.values())

ALL_TOPICS: tuple[Topic, ...] = (
    PORTAL_VM_REQUESTS,
    PROVISIONING_REQUESTS,
    WALLET_DECISIONS,
    PROVISIONING_OUTCOMES,
    VCENTER_COMMANDS,
    VCENTER_EVENTS,
    CLOCK_TICKS,
    METERING_USAGE,
    BILLING_DEBITS,
    WALLET_TOPUPS,
    WALLET_EVENTS,
    BILLING_EVENTS,
    DEAD_LETTER,
)
