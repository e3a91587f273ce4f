"""The inbox window's pure rules: which messages are refused by their event time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from shared.consumer import Incoming
from shared.retention import oldest_accepted, refuse_expired

NOW = datetime(2026, 9, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def item(occurred_at: datetime) -> Incoming[Any]:
    message = SimpleNamespace(type="vcenter.vm_powered_on", event_id=uuid4(),
                              occurred_at=occurred_at)
    return Incoming(record=SimpleNamespace(partition=0, offset=1), message=message)


def test_the_oldest_accepted_message_is_the_window_less_its_margin_before_the_clock():
    assert oldest_accepted(NOW, 45 * DAY, 3 * DAY) == NOW - 42 * DAY
    with pytest.raises(ValueError, match="shorter than the inbox retention"):
        oldest_accepted(NOW, 3 * DAY, 3 * DAY)


def test_messages_before_the_oldest_accepted_are_refused_naming_why_and_the_rest_kept():
    oldest = NOW - 42 * DAY
    young, edge, old = item(NOW - DAY), item(oldest), item(oldest - timedelta(seconds=1))
    kept, refused = refuse_expired([young, old, edge], oldest)
    assert kept == [young, edge]
    (refusal,) = refused
    assert refusal.record is old.record
    assert "older than the inbox window" in refusal.reason
    assert str(old.message.event_id) in refusal.reason
