"""`/metrics` shows an operator what grows: inbox and outbox rows, the oldest outbox row's
age and consumer lag per topic, against the real broker and database."""

from __future__ import annotations

import asyncpg
import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from shared.operations import OperationsMetrics
from shared.topics import VCENTER_EVENTS
from tests.integration.test_metering_service import Vm, metering
from tests.kafka_helpers import KafkaProbe, settled
from tests.keys import key_ring


def samples(text: str, service: str) -> dict[tuple[str, str], float]:
    """(metric name, table or topic label) -> value, for one service's operations gauges."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("cloudwallet_") and s.labels.get("service") == service:
                found[(s.name, s.labels.get("table") or s.labels.get("topic") or "")] = s.value
    return found


async def test_metrics_show_inbox_and_outbox_rows_outbox_age_and_consumer_lag(env, db):
    vm, later = Vm(), Vm()
    async with metering(env) as (service, m):
        await m.publish(vm.created(0), vm.on(5), vm.off(10))
        await settled(m.kafka, env.settings, "metering", [VCENTER_EVENTS],
                      database_url=env.database_url)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http),
                                     base_url="http://metering",
                                     auth=await key_ring(service.pool)) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200, response.text
        seen = samples(response.text, "metering")
        assert seen[("cloudwallet_table_rows", "metering.inbox")] == 3
        assert seen[("cloudwallet_table_rows", "metering.outbox")] == 0
        assert seen[("cloudwallet_outbox_oldest_age_seconds", "")] == 0
        assert seen[("cloudwallet_consumer_lag", "vcenter.events")] == 0
    # The service stopped, it falls behind: two events wait on the topic, and a row waits
    # in the outbox (as if the relay had been stuck for a minute).
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        for event in (later.created(0), later.on(1)):
            await kafka.publish(env.topic(VCENTER_EVENTS.name), later.vm_id, event)
    await db.execute("""INSERT INTO metering.outbox (topic, value, created_at)
                        VALUES ('x', '\\x00', now() - interval '60 seconds')""")
    operations = OperationsMetrics("metering", "metering", env.settings)
    operations.subscribed(VCENTER_EVENTS, "metering")
    pool = await asyncpg.create_pool(env.database_url, min_size=1, max_size=1)
    try:
        await operations.refresh(pool)
    finally:
        await pool.close()
        await operations.close()
    gauge = REGISTRY.get_sample_value
    assert gauge("cloudwallet_table_rows", {"service": "metering",
                                            "table": "metering.outbox"}) == 1
    age = gauge("cloudwallet_outbox_oldest_age_seconds", {"service": "metering"})
    assert age is not None and age >= 60
    assert gauge("cloudwallet_consumer_lag", {"service": "metering",
                                              "topic": "vcenter.events"}) == 2
