"""What each service consumes, from the topic map (`shared/topics.py`) and the contracts
(`shared.asyncapi.TOPIC_MESSAGES`, the models of each topic): the list the replay test must
cover, so a message type added to a consumed topic without a replay case fails the suite."""

from __future__ import annotations

from typing import Any

from shared.asyncapi import TOPIC_MESSAGES
from shared.topics import ALL_TOPICS

# The topic map names consumers by role; these are the consumer names our processes use.
CONSUMER_OF_ROLE = {
    "wallet": "wallet",
    "provisioning": "provisioning",
    "metering": "metering",
    "billing": "billing",
    "vcenter-hooks": "vcenter-simulator",
}
# Readers outside this repository (the portal, people on call).
OUTSIDE = {"portal", "operators"}


def message_type(model: Any) -> str:
    return str(model.model_fields["type"].default)


def consumed_types() -> set[tuple[str, str, str]]:
    """(consumer, topic, message type) for every type a service of ours consumes."""
    return {(CONSUMER_OF_ROLE[role], topic.name, message_type(model))
            for topic in ALL_TOPICS for role in topic.consumers if role not in OUTSIDE
            for model in TOPIC_MESSAGES[topic]}


def consumed_topics(consumer: str) -> set[str]:
    """The topics the topic map says `consumer` reads."""
    return {topic.name for topic in ALL_TOPICS for role in topic.consumers
            if CONSUMER_OF_ROLE.get(role) == consumer}
