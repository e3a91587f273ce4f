"""Thin handlers: Kafka batches and HTTP commands in, domain calls, facts out as events.

Each batch runs in one transaction: inbox claim (idempotency; for charges, the ledger's own
unique key), row locks on the wallets it touches, the domain decisions, then the writes and
the outgoing events (outbox) together.
"""

from __future__ import annotations

from services.wallet.charges import ChargeFlow
from services.wallet.flow import CONSUMER
from services.wallet.holds import HoldFlow
from services.wallet.topups import TopUpFlow


class WalletHandlers(HoldFlow, ChargeFlow, TopUpFlow):
    """Every flow of the wallet on one runtime: holds (services/wallet/holds.py), usage
    charges (charges.py) and top-ups (topups.py), sharing flow.py's claim and commit."""


__all__ = ["CONSUMER", "WalletHandlers"]
