"""The Kafka users' ACLs follow the topic map and nothing else."""

from shared.kafka_security import acls, users
from shared.topics import ALL_TOPICS, VCENTER_EVENTS


def test_each_user_writes_exactly_the_topics_it_produces_and_reads_those_it_consumes():
    granted = acls(topic_prefix="t.", group_prefix="g.")
    for user in users():
        writes = {a.name for a in granted if a.user == user and a.operation == "WRITE"}
        reads = {a.name for a in granted if a.user == user and a.resource_type == "TOPIC"
                 and a.operation == "READ"}
        assert writes == {f"t.{t.name}" for t in ALL_TOPICS if user in t.producers}, user
        assert reads == {f"t.{t.name}" for t in ALL_TOPICS if user in t.consumers}, user
    assert all(a.pattern_type == "LITERAL" for a in granted if a.resource_type == "TOPIC")


def test_vcenter_hooks_write_vcenter_events_and_nothing_else():
    writes = {a.name for a in acls() if a.user == "vcenter-hooks" and a.operation == "WRITE"}
    assert writes == {VCENTER_EVENTS.name}


def test_consumers_join_only_groups_named_after_them():
    groups = [a for a in acls(group_prefix="g.") if a.resource_type == "GROUP"]
    assert all(a.pattern_type == "PREFIXED" and a.operation == "READ" for a in groups)
    assert {(a.user, a.name) for a in groups if a.user == "wallet"} == {("wallet", "g.wallet.")}
    assert not any(a.user == "clock" for a in groups)  # it only produces
