"""Kafka users and what each may do, derived from the topic map: every producer and
consumer named in `shared/topics.py` is a SCRAM user that may write only the topics it
produces, read only the topics it consumes, and join only its own consumer groups. Clients
authenticate with SASL/SCRAM-SHA-512 when the settings name a user (else plaintext, as the
shared development broker expects)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faststream.security import BaseSecurity, SASLScram512

from shared.settings import Settings
from shared.topics import ALL_TOPICS, Topic

MECHANISM = "SCRAM-SHA-512"
# The broker's own user (inter-broker traffic, topic and ACL administration, tests).
ADMIN_USER = "admin"
# Consumer-group names a user's consumers use, where they differ from the user's name
# (groups are `<GROUP_PREFIX><consumer>.<topic>`).
GROUP_NAMES = {"vcenter-hooks": ("vcenter-hooks", "vcenter-simulator")}


@dataclass(frozen=True)
class Acl:
    user: str
    resource_type: str  # TOPIC | GROUP
    pattern_type: str  # LITERAL | PREFIXED
    name: str
    operation: str  # WRITE | READ | DESCRIBE

    def line(self) -> str:
        return "\t".join((self.user, self.resource_type, self.pattern_type, self.name,
                          self.operation))


def users(topics: tuple[Topic, ...] = ALL_TOPICS) -> list[str]:
    return sorted({name for t in topics for name in (*t.producers, *t.consumers)})


def acls(topic_prefix: str = "", group_prefix: str = "",
         topics: tuple[Topic, ...] = ALL_TOPICS) -> list[Acl]:
    granted: list[Acl] = []
    for topic in topics:
        name = f"{topic_prefix}{topic.name}"
        for producer in topic.producers:
            granted += [Acl(producer, "TOPIC", "LITERAL", name, op)
                        for op in ("WRITE", "DESCRIBE")]
        for consumer in topic.consumers:
            granted += [Acl(consumer, "TOPIC", "LITERAL", name, op)
                        for op in ("READ", "DESCRIBE")]
    consumers = sorted({c for t in topics for c in t.consumers})
    for consumer in consumers:
        granted += [Acl(consumer, "GROUP", "PREFIXED", f"{group_prefix}{group}.", "READ")
                    for group in GROUP_NAMES.get(consumer, (consumer,))]
    return granted


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the settings' Kafka user (none: plaintext)."""
    if not settings.kafka_sasl_username:
        return {}
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": MECHANISM,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password}


def broker_security(settings: Settings) -> BaseSecurity | None:
    """The same for FastStream's broker."""
    if not settings.kafka_sasl_username:
        return None
    return SASLScram512(settings.kafka_sasl_username, settings.kafka_sasl_password)
