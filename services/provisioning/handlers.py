"""Thin handlers: Kafka batches and HTTP commands in, domain calls, facts out as messages.

Each Kafka batch is one transaction: inbox claim (idempotency), row locks (organisations,
then requests, then VMs), the domain's decisions, then the writes and the outgoing messages
(outbox) together. HTTP VM requests are stored with their ReserveFunds in one statement. A
crash anywhere leaves either all of it or none of it.
"""

from __future__ import annotations

from services.provisioning.commands import CommandFlow
from services.provisioning.flow import CONSUMER
from services.provisioning.lifecycle import LifecycleFlow
from services.provisioning.submissions import SubmissionFlow
from services.provisioning.suspension import SuspensionFlow


class ProvisioningHandlers(SubmissionFlow, LifecycleFlow, SuspensionFlow, CommandFlow):
    """Every flow of provisioning on one runtime: submissions (submissions.py), a request's
    life after intake (lifecycle.py), suspension for funds (suspension.py) and the HTTP
    commands (commands.py), sharing flow.py."""


__all__ = ["CONSUMER", "ProvisioningHandlers"]
