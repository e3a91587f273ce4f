"""After a fault-injection run: what was lost or booked twice, counted from the wallet's
ledger against the oracle's expectations, and what was left unfinished.

The judge, not the workload, so it reads the services' tables (the simulation itself only
uses their APIs). Per kind of ledger row:

- usage debits: a usage entry (a ledger row per wallet and hour, or more than one when the
  hour's VMs came in several batches) names each VM it charges and its billing line; the
  oracle's VM-hours with a charge are expected. Fewer distinct VM-hours charged than
  expected: lost; a billing line in two entries, a VM-hour charged by two lines, or more
  VM-hours than expected: duplicated.
- top-ups (opening, invoice payments, late and auto top-ups) and refunds: the oracle's
  count of each. Fewer rows: lost; more, or two rows with one idempotency key: duplicated.

And: every provisioning request in a final state, no hold open for a VM that does not
exist (never created, or deleted)."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.sim.oracle import Oracle
from deploy.sim.scenario import Scenario
from shared.settings import Settings
from shared.topics import ALL_TOPICS

OPEN_REQUESTS = ("awaiting_funds", "awaiting_vcenter")


@dataclass
class Count:
    expected: int
    booked: int
    lost: int
    duplicated: int


@dataclass
class Verdict:
    kinds: dict[str, Count] = field(default_factory=dict)
    unfinished_requests: int = 0
    orphan_holds: int = 0
    messages: int = 0  # records on every topic at the end

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.kinds.values())

    @property
    def duplicated(self) -> int:
        return sum(c.duplicated for c in self.kinds.values())

    @property
    def clean(self) -> bool:
        return self.unfinished_requests == 0 and self.orphan_holds == 0

    def lines(self) -> list[str]:
        return [f"{kind}: expected {c.expected:,}, booked {c.booked:,}, lost {c.lost}, "
                f"duplicated {c.duplicated}" for kind, c in self.kinds.items()] + [
            f"provisioning requests not in a final state: {self.unfinished_requests}",
            f"holds open for a VM that does not exist: {self.orphan_holds}"]


def expected_counts(scenario: Scenario) -> dict[str, int]:
    """What the oracle says the ledger must hold: usage hours with a charge (per wallet and
    hour), top-ups and applied refunds."""
    oracle = Oracle(scenario)
    expected = oracle.run()
    charged = sum(1 for vm in oracle.vms.values()
                  for _seconds, _rated, amount in vm.hours.values() if amount > 0)
    return {"usage_debit": charged,
            "top_up": len(expected.top_ups),
            "refund": sum(1 for outcome in expected.refunds.values() if outcome == "applied")}


async def judge(settings: Settings, scenario: Scenario) -> Verdict:
    expected = expected_counts(scenario)
    verdict = Verdict()
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            """SELECT kind, count(*) AS booked,
                      count(DISTINCT (wallet_id, idempotency_key)) AS keys
               FROM wallet.wallet_transactions WHERE kind <> 'usage_debit' GROUP BY kind
               UNION ALL
               -- each VM a usage entry charges (its part), by VM and hour
               SELECT 'usage_debit', count(*), count(DISTINCT (part_vm, occurred_at))
               FROM wallet.wallet_transactions t, unnest(t.vm_ids) AS part(part_vm)
               WHERE t.kind = 'usage_debit'""")
        # (a usage row booked per line, before entries, names its VM in vm_id: none here,
        # as every run starts empty)
        verdict.unfinished_requests = await conn.fetchval(
            "SELECT count(*) FROM provisioning.requests WHERE status = ANY($1::text[])",
            list(OPEN_REQUESTS))
        verdict.orphan_holds = await conn.fetchval(
            """SELECT count(*) FROM wallet.holds h
               WHERE h.status IN ('pending', 'active') AND NOT EXISTS (
                   SELECT 1 FROM provisioning.vms v
                   WHERE v.vm_id = h.vm_id AND v.power_state <> 'deleted')""")
    finally:
        await conn.close()
    booked = {r["kind"]: r for r in rows}
    for kind, wanted in expected.items():
        row = booked.get(kind)
        count, distinct = (row["booked"], row["keys"]) if row else (0, 0)
        verdict.kinds[kind] = Count(
            expected=wanted, booked=count, lost=max(wanted - distinct, 0),
            duplicated=(count - distinct) + max(distinct - wanted, 0))
    verdict.messages = await messages_on_kafka(settings)
    return verdict


async def messages_on_kafka(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([
            TopicPartition(settings.topic(t.name), p)
            for t in ALL_TOPICS for p in range(t.partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()
