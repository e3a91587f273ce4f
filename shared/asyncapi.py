"""The AsyncAPI document, generated from the topic map and the pydantic contracts, so the
published description cannot drift from the code (a test compares it with docs/asyncapi.json).

    python -m shared.asyncapi > docs/asyncapi.json
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from shared.contracts import billing, clock, deadletter, metering, portal, vcenter, wallet
from shared.topics import (
    ALL_TOPICS,
    BILLING_DEBITS,
    BILLING_EVENTS,
    CLOCK_TICKS,
    DEAD_LETTER,
    METERING_USAGE,
    PORTAL_VM_REQUESTS,
    PROVISIONING_OUTCOMES,
    PROVISIONING_REQUESTS,
    VCENTER_COMMANDS,
    VCENTER_EVENTS,
    WALLET_DECISIONS,
    WALLET_EVENTS,
    WALLET_TOPUPS,
    Topic,
)


def _members(union: Any) -> list[type[BaseModel]]:
    """The models of an `Annotated[A | B, Field(discriminator=...)]` union."""
    inner = getattr(union, "__origin__", union)
    return list(getattr(inner, "__args__", (inner,)))


TOPIC_MESSAGES: dict[Topic, list[type[BaseModel]]] = {
    PORTAL_VM_REQUESTS: [portal.RequestVm],
    PROVISIONING_REQUESTS: [wallet.ReserveFunds],
    WALLET_DECISIONS: _members(wallet.WalletDecision),
    PROVISIONING_OUTCOMES: _members(wallet.ProvisioningOutcome),
    VCENTER_COMMANDS: _members(vcenter.VcenterCommand),
    VCENTER_EVENTS: _members(vcenter.VcenterStreamItem),
    CLOCK_TICKS: [clock.ClockTick],
    METERING_USAGE: _members(metering.UsageStreamItem),
    BILLING_DEBITS: _members(wallet.BillingCharge),
    WALLET_TOPUPS: [wallet.TopUpWallet],
    WALLET_EVENTS: _members(wallet.WalletEvent),
    BILLING_EVENTS: _members(billing.BillingEvent),
    DEAD_LETTER: [deadletter.DeadLetter],
}


def document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic in ALL_TOPICS:
        models = TOPIC_MESSAGES[topic]
        channel_messages = {}
        for model in models:
            name = model.__name__
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas[def_name] = definition
            schemas[name] = schema
            messages[name] = {
                "name": name,
                "title": name,
                "summary": (model.__doc__ or "").strip().split("\n\n")[0],
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{name}"},
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        channel_id = topic.name.replace(".", "_").replace("-", "_")
        channels[channel_id] = {
            "address": topic.name,
            "description": f"{topic.description} Key: {topic.key}. "
                           f"Partitions: {topic.partitions}.",
            "messages": channel_messages,
            "bindings": {"kafka": {"partitions": topic.partitions, "replicas": 1,
                                   "topicConfiguration": {"retention.ms": topic.retention_ms}}},
        }
        for producer in topic.producers:
            operations[f"{producer}_sends_{channel_id}"] = {
                "action": "send", "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"{producer} publishes to {topic.name}"}
        for consumer in topic.consumers:
            operations[f"{consumer}_receives_{channel_id}"] = {
                "action": "receive", "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"{consumer} consumes {topic.name}"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "cloudwallet",
            "version": "1.0.0",
            "description": "Wallet, metering and billing backbone of a cloud self-service portal."
                           " Every message carries the envelope fields event_id, type, version,"
                           " occurred_at (event time), correlation_id and causation_id.",
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:19092", "protocol": "kafka",
                              "description": "The local stack started by ./run stack"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
