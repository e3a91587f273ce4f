"""The wallet's facts as contract events, caused by the message at hand."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from services.wallet.domain import (
    Depleted,
    FundsRestored,
    LowBalance,
    Refunded,
    Rejected,
    Reserved,
    ToppedUp,
    Wallet,
    WalletFact,
)
from shared.contracts.base import Envelope
from shared.contracts.wallet import (
    AutoTopUpSettings,
    FundsRejected,
    FundsReserved,
    RejectionReason,
    WalletDepleted,
    WalletFundsRestored,
    WalletLowBalance,
    WalletRefunded,
    WalletToppedUp,
)
from shared.money import MoneyModel
from shared.outbox import Outgoing, outgoing
from shared.settings import Settings
from shared.topics import WALLET_DECISIONS, WALLET_EVENTS


class Events:
    """Turns the wallet's facts into contract events, caused by the message at hand."""

    def __init__(self, settings: Settings, at: datetime | None = None) -> None:
        self.settings = settings
        self.at = at  # when an event with no cause (an HTTP call) happened; None: now
        self.out: list[Outgoing] = []

    def _money(self, wallet: Wallet, amount: int) -> MoneyModel:
        return MoneyModel(amount_minor=amount, currency=wallet.currency)

    def emit(self, wallet: Wallet, cause: Envelope | None, facts: Sequence[WalletFact]) -> None:
        for fact in facts:
            self._emit_one(wallet, cause, fact)

    def send(self, topic: str, key: UUID, cause: Envelope | None, model: type[Envelope],
              **fields: Any) -> None:
        if cause is None and self.at is not None:
            fields.setdefault("occurred_at", self.at)
        message = cause.caused(model, **fields) if cause else model(**fields)
        self.out.append(outgoing(self.settings.topic(topic), key, message))

    def _emit_one(self, w: Wallet, cause: Envelope | None, fact: WalletFact) -> None:
        events, decisions = WALLET_EVENTS.name, WALLET_DECISIONS.name
        common = {"wallet_id": w.wallet_id}
        match fact:
            case Reserved(hold=hold, available_after=available):
                self.send(decisions, w.wallet_id, cause, FundsReserved, **common,
                           request_id=hold.request_id, vm_id=hold.vm_id, hold_id=hold.hold_id,
                           amount=self._money(w, hold.amount),
                           available_after=self._money(w, available), expires_at=hold.expires_at)
            case Rejected():
                self.reject(w.wallet_id, w.currency, cause, fact)
            case LowBalance(available=available, threshold=threshold):
                auto = None
                if w.auto_topup is not None:
                    auto = AutoTopUpSettings(threshold=self._money(w, w.auto_topup.threshold),
                                             amount=self._money(w, w.auto_topup.amount),
                                             card_token=w.auto_topup.card_token)
                self.send(events, w.wallet_id, cause, WalletLowBalance, **common,
                           organisation_id=w.organisation_id, billing_mode=w.billing_mode.value,
                           available=self._money(w, available),
                           threshold=self._money(w, threshold), auto_topup=auto)
            case Depleted(available=available):
                self.send(events, w.wallet_id, cause, WalletDepleted, **common,
                           organisation_id=w.organisation_id, billing_mode=w.billing_mode.value,
                           available=self._money(w, available))
            case FundsRestored(available=available):
                self.send(events, w.wallet_id, cause, WalletFundsRestored, **common,
                           organisation_id=w.organisation_id, available=self._money(w, available))
            case ToppedUp(payment_id=payment_id, amount=amount, balance_after=balance):
                self.send(events, w.wallet_id, cause, WalletToppedUp, **common,
                           payment_id=payment_id, amount=self._money(w, amount),
                           balance_after=self._money(w, balance))
            case Refunded(refund_id=refund_id, charge_entry_id=entry, amount=amount,
                          balance_after=balance, vm_id=vm_id):
                self.send(events, w.wallet_id, cause, WalletRefunded, **common,
                           refund_id=refund_id, charge_entry_id=entry, vm_id=vm_id,
                           amount=self._money(w, amount), balance_after=self._money(w, balance))

    def reject(self, wallet_id: UUID, currency: str, cause: Envelope | None,
               fact: Rejected) -> None:
        self.send(WALLET_DECISIONS.name, wallet_id, cause, FundsRejected, wallet_id=wallet_id,
                   request_id=fact.request_id, vm_id=fact.vm_id,
                   reason=RejectionReason(fact.reason.value), detail=fact.detail,
                   required=MoneyModel(amount_minor=max(fact.required, 0), currency=currency),
                   available=None if fact.available is None
                   else MoneyModel(amount_minor=fact.available, currency=currency))
