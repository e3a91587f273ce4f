"""The system's main job, end to end through the running services (smoke flow for now)."""

from __future__ import annotations

import asyncio
import json
from uuid import uuid4

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.launcher import RunningSystem
from services.wallet.api import sign
from shared.contracts.wallet import ReserveFunds
from shared.money import Money, MoneyModel
from shared.topics import PROVISIONING_REQUESTS, WALLET_DECISIONS


async def run_demo(system: RunningSystem, days: int = 35) -> bool:
    settings = system.settings
    async with httpx.AsyncClient(base_url=system.url("wallet"), timeout=10) as wallet:
        opened = (await wallet.post("/organisations", json={"name": "Demo Holdings"})).json()
        wallet_id = opened["wallet_id"]
        body = json.dumps({"payment_id": f"demo-{uuid4().hex[:8]}", "wallet_id": wallet_id,
                           "amount_minor": 1_000_000, "status": "succeeded"}).encode()
        await wallet.post("/webhooks/payments", content=body,
                          headers={"X-Signature": sign(settings.payment_webhook_secret, body)})
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        requests = [ReserveFunds(request_id=uuid4(), wallet_id=wallet_id,
                                 organisation_id=opened["organisation_id"], vm_id=uuid4(),
                                 amount=MoneyModel(amount_minor=amount))
                    for amount in (50_000, 2_000_000)]
        for r in requests:
            await producer.send_and_wait(settings.topic(PROVISIONING_REQUESTS.name),
                                         r.model_dump_json().encode(), key=str(wallet_id).encode())
        await producer.stop()
        decisions = await _read(settings.kafka_bootstrap_servers,
                                settings.topic(WALLET_DECISIONS.name),
                                {str(r.request_id) for r in requests})
        for r in requests:
            d = decisions[str(r.request_id)]
            verdict = "RESERVED" if d["type"] == "wallet.funds_reserved" else \
                f"REJECTED ({d['reason']}: {d['detail']})"
            print(f"VM costing {r.amount.to_money().format()}: {verdict}")
        status = (await wallet.get(f"/wallets/{wallet_id}")).json()
        print(f"wallet {wallet_id}: balance {status['balance']}, held "
              f"{Money(status['held_minor']).format()}, available {status['available']}")
        ok = decisions[str(requests[0].request_id)]["type"] == "wallet.funds_reserved" and \
            decisions[str(requests[1].request_id)]["type"] == "wallet.funds_rejected"
    print("demo:", "OK" if ok else "FAILED")
    return ok


async def _read(bootstrap: str, topic: str, request_ids: set[str], timeout: float = 30) -> dict:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, dict] = {}
    try:
        async with asyncio.timeout(timeout):
            while not request_ids <= set(found):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        message = json.loads(record.value)
                        if message.get("request_id") in request_ids:
                            found[message["request_id"]] = message
    finally:
        await consumer.stop()
    return found
