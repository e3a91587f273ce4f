from uuid import uuid4

import httpx

from services.wallet.api import sign
from services.wallet.app import WalletService
from shared.contracts.wallet import ReserveFunds
from shared.money import MoneyModel
from shared.topics import PROVISIONING_REQUESTS, WALLET_DECISIONS
from tests.kafka_helpers import KafkaProbe


async def test_reserve_through_kafka(env):
    service = WalletService(env.settings)
    await service.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http),
                                     base_url="http://wallet") as http:
            opened = (await http.post("/organisations", json={"name": "Acme"})).json()
            wallet_id = opened["wallet_id"]
            body = f'{{"payment_id":"p1","wallet_id":"{wallet_id}","amount_minor":1000000,"status":"succeeded"}}'.encode()
            r = await http.post("/webhooks/payments", content=body,
                                headers={"X-Signature": sign(env.settings.payment_webhook_secret, body)})
            assert r.status_code == 200, r.text
            async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
                request = ReserveFunds(request_id=uuid4(), wallet_id=wallet_id, organisation_id=opened["organisation_id"],
                                       vm_id=uuid4(), amount=MoneyModel(amount_minor=50000))
                await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), wallet_id, request)
                decisions = await kafka.read_count(env.topic(WALLET_DECISIONS.name), 1)
            assert decisions[0]["type"] == "wallet.funds_reserved"
            status = (await http.get(f"/wallets/{wallet_id}")).json()
            assert status["balance_minor"] == 1000000
            assert status["held_minor"] == 50000
    finally:
        await service.stop()
