"""The topic map's consumers are the subscriptions in the code: the replay enumeration
(`tests/consumed_types.py`) is only as good as the map it is taken from."""

from __future__ import annotations

from typing import Any

import pytest

from services.billing.app import BillingService
from services.metering.app import MeteringService
from services.provisioning.app import ProvisioningService
from services.vcenter_simulator.app import VcenterSimulator
from services.vcenter_simulator.domain import SimulatorConfig
from services.wallet.app import WalletService
from shared.settings import Settings
from shared.topics import ALL_TOPICS
from tests.consumed_types import CONSUMER_OF_ROLE, OUTSIDE, consumed_topics, consumed_types

SETTINGS = Settings(topic_prefix="p.", group_prefix="p.")
SERVICES: dict[str, Any] = {
    "wallet": lambda: WalletService(SETTINGS),
    "provisioning": lambda: ProvisioningService(SETTINGS),
    "metering": lambda: MeteringService(SETTINGS),
    "billing": lambda: BillingService(SETTINGS),
    "vcenter-simulator": lambda: VcenterSimulator(SETTINGS, SimulatorConfig()),
}


def test_every_consumer_in_the_topic_map_is_known():
    roles = {role for topic in ALL_TOPICS for role in topic.consumers}
    assert roles <= set(CONSUMER_OF_ROLE) | OUTSIDE
    assert set(CONSUMER_OF_ROLE.values()) == set(SERVICES)


@pytest.mark.parametrize("consumer", sorted(SERVICES))
def test_a_service_subscribes_to_what_the_topic_map_says_it_consumes(consumer):
    service = SERVICES[consumer]()
    subscribed = {(sub.group_id, topic) for sub in service.broker.subscribers
                  for topic in sub.topic_names}
    assert {topic.removeprefix("p.") for _, topic in subscribed} == consumed_topics(consumer)
    assert all(group == f"p.{consumer}.{topic.removeprefix('p.')}"
               for group, topic in subscribed)


def test_the_enumeration_has_every_type_of_every_consumed_topic():
    types = consumed_types()
    assert ("wallet", "provisioning.outcomes", "provisioning.cancelled") in types
    assert ("provisioning", "vcenter.events", "clock.tick") in types
    assert ("vcenter-simulator", "vcenter.commands", "vcenter.delete_vm") in types
    assert not any(consumer in OUTSIDE for consumer, _, _ in types)
