"""The wallet's events: organisations opened, and an organisation's VMs suspended when its
wallet is depleted and resumed when funds are restored."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from services.provisioning import repository as repo
from services.provisioning.domain import (
    Organisation,
    event_now,
)
from services.provisioning.flow import CONSUMER, ProvisioningFlow
from services.provisioning.messages import Messages
from shared.consumer import Records, claim_new, dead_letter, dead_letters, parse_records
from shared.contracts.wallet import (
    WalletDepleted,
    WalletEvent,
    WalletFundsRestored,
    WalletOpened,
)
from shared.outbox import enqueue

WALLET_FACTS: TypeAdapter[Any] = TypeAdapter(WalletEvent)


class SuspensionFlow(ProvisioningFlow):
    # --- wallet.events: the organisation table, suspension and resume ----------------------

    async def on_wallet_events(self, records: Records) -> None:
        good, bad = parse_records(records, WALLET_FACTS)
        messages = Messages(self.settings)
        messages.out += dead_letters(self.settings, CONSUMER, bad)
        opened = [i.message for i in good if isinstance(i.message, WalletOpened)]
        funds = [i for i in good if isinstance(i.message, WalletDepleted | WalletFundsRestored)]
        async with self.pool.acquire() as conn, conn.transaction():
            await repo.upsert_organisations(conn, [
                Organisation(m.organisation_id, m.wallet_id, m.currency, m.billing_mode)
                for m in opened], [m.occurred_at for m in opened])
            clock = await repo.clock_now(conn)
            fresh, reused = await claim_new(
                conn, repo.SCHEMA, self._young_enough(funds, clock, messages))
            messages.out += dead_letters(self.settings, CONSUMER, reused)
            org_ids = {i.message.organisation_id for i in fresh}
            # NO KEY UPDATE: blocks the vCenter consumer's share lock (so a power-on and a
            # depletion see each other) but not new requests referencing the organisation.
            orgs = await repo.organisations(conn, org_ids, "FOR NO KEY UPDATE")
            vms = await repo.live_vms_of_organisations(conn, org_ids, "FOR UPDATE")
            for item in fresh:
                m = item.message
                org = orgs.get(m.organisation_id)
                if org is None:
                    messages.out.append(dead_letter(self.settings, CONSUMER, item.record,
                                                    f"unknown organisation {m.organisation_id}"))
                    continue
                mine = [vm for vm in vms if vm.organisation_id == org.organisation_id]
                now = event_now(clock, m.occurred_at)
                if isinstance(m, WalletDepleted):
                    messages.add(org.funds_depleted(mine, now), m)
                else:
                    messages.add(org.funds_restored(mine, now), m)
            await repo.save_suspension(conn, list(orgs.values()))
            await repo.save_vms(conn, vms)
            committed = await enqueue(conn, repo.SCHEMA, messages.out)
        self.runtime.relay.push(committed)
