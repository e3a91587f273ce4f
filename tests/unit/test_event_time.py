"""Event time for what happens without a time of its own (HTTP calls), and for messages
caused by others."""

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from shared.contracts.wallet import TopUpWallet, WalletDepleted
from shared.event_time import event_time_now
from shared.money import MoneyModel

WALL = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
PAST = datetime(2026, 7, 1, tzinfo=UTC)


def test_production_takes_the_later_of_the_clock_and_the_wall_clock():
    assert event_time_now(None, WALL) == WALL
    assert event_time_now(WALL - timedelta(seconds=30), WALL) == WALL
    assert event_time_now(WALL + timedelta(days=1), WALL) == WALL + timedelta(days=1)


def test_a_simulation_driven_by_ticks_never_stamps_the_wall_clock():
    assert event_time_now(PAST, WALL, "ticks") == PAST
    assert event_time_now(WALL + timedelta(days=30), WALL, "ticks") == WALL + timedelta(days=30)
    assert event_time_now(None, WALL, "ticks") == WALL  # before the first tick


def test_a_caused_message_happens_when_its_cause_did():
    cause = TopUpWallet(payment_id="p1", wallet_id=uuid4(), occurred_at=PAST,
                        amount=MoneyModel(amount_minor=100, currency="ZAR"),
                        source="gateway_webhook")
    effect = cause.caused(WalletDepleted, wallet_id=cause.wallet_id, organisation_id=uuid4(),
                          billing_mode="PAYG", available=MoneyModel(amount_minor=-1,
                                                                    currency="ZAR"))
    assert effect.occurred_at == PAST
    assert effect.causation_id == cause.event_id
    later = cause.caused(WalletDepleted, wallet_id=cause.wallet_id, organisation_id=uuid4(),
                         billing_mode="PAYG", occurred_at=WALL,
                         available=MoneyModel(amount_minor=-1, currency="ZAR"))
    assert later.occurred_at == WALL
