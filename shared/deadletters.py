"""Dead letters for operators: which letters there are, which ones an operator chose, how
they print, and the record that sends one again to where it came from. Pure: reading the
`deadletter` topic and sending are in `shared/deadletter_kafka.py`, the commands in
`shared/cli.py`.

A replayed record is the original: same topic, partition, key and value. Replaying after
a fix is safe twice over because every consumer is idempotent on the message's own id
(its inbox or its ledger key), so a letter replayed twice is booked once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

from pydantic import ValidationError

from shared.contracts.deadletter import DeadLetter

REPLAY_HEADER = "deadletter-replay"  # names the letter a replayed record came from
MIN_ID_PREFIX = 8
UNDECODABLE = "\ufffd"  # what `dead_letter` put where the original bytes were not UTF-8


@dataclass(frozen=True, slots=True)
class Letter:
    offset: int  # where the letter is on the deadletter topic
    letter: DeadLetter

    @property
    def letter_id(self) -> UUID:
        return self.letter.event_id


@dataclass(frozen=True, slots=True)
class Replay:
    """The record to send again."""
    letter_id: UUID
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class SelectionError(ValueError):
    """An id names no letter, or more than one."""


class NotReplayable(ValueError):
    """The letter does not hold the original record's bytes."""


def parse_letters(records: Iterable[tuple[int, bytes | None]]) -> list[Letter]:
    """The letters among (offset, value) records of the deadletter topic, each letter once
    (a redelivered record dead-lettered again has the same id; the first is kept). A value
    that is not a dead letter is skipped: this topic is read by people, not judged."""
    letters: dict[UUID, Letter] = {}
    for offset, value in records:
        try:
            letter = DeadLetter.model_validate_json(value or b"")
        except ValidationError:
            continue
        letters.setdefault(letter.event_id, Letter(offset, letter))
    return list(letters.values())


def topic_names(topic: str, prefix: str) -> set[str]:
    """The names a `--topic` may mean: as given, or with the deployment's topic prefix."""
    return {topic, f"{prefix}{topic}"}


def of_topic(letters: Iterable[Letter], topic: str | None, prefix: str = "") -> list[Letter]:
    """The letters whose record came from `topic` (all of them for None)."""
    if topic is None:
        return list(letters)
    names = topic_names(topic, prefix)
    return [x for x in letters if x.letter.source_topic in names]


def choose(letters: Sequence[Letter], ids: Sequence[str]) -> list[Letter]:
    """The letters named by `ids`, each a whole letter id or a unique prefix of at least
    `MIN_ID_PREFIX` characters, in the order given and each once."""
    chosen: dict[UUID, Letter] = {}
    for wanted in ids:
        text = wanted.strip().lower()
        if len(text) < MIN_ID_PREFIX:
            raise SelectionError(f"{wanted!r}: give at least {MIN_ID_PREFIX} characters of an id")
        matches = [x for x in letters if str(x.letter_id).startswith(text)]
        if not matches:
            raise SelectionError(f"no dead letter {wanted}")
        if len(matches) > 1:
            raise SelectionError(f"{wanted} names {len(matches)} dead letters; give more of it")
        chosen.setdefault(matches[0].letter_id, matches[0])
    return list(chosen.values())


def replay_of(letter: Letter) -> Replay:
    """The original record, to its own partition with its key, so it keeps its place in the
    order of what the key's consumer sees (as far as a late message can)."""
    dead = letter.letter
    if UNDECODABLE in dead.payload:
        raise NotReplayable(f"dead letter {letter.letter_id}: the original value was not "
                            "UTF-8, and the letter keeps only its decoded text")
    return Replay(
        letter_id=letter.letter_id,
        topic=dead.source_topic,
        partition=dead.source_partition,
        key=dead.source_key.encode() if dead.source_key is not None else None,
        value=dead.payload.encode(),
        headers=((REPLAY_HEADER, str(letter.letter_id).encode()),),
    )


def summary_line(letter: Letter, width: int = 120) -> str:
    """One tab-separated line: id, when, consumer, source topic/partition@offset, key and
    the reason (cut to `width`)."""
    dead = letter.letter
    reason = " ".join(dead.reason.split())
    if len(reason) > width:
        reason = reason[: width - 1] + "…"
    return "\t".join((
        str(letter.letter_id), dead.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"), dead.consumer,
        f"{dead.source_topic}/{dead.source_partition}@{dead.source_offset}",
        dead.source_key or "-", reason))


def reasons_count(letters: Iterable[Letter]) -> dict[str, int]:
    """How many letters per reason's first clause (before ':'), most first: what broke."""
    counts: dict[str, int] = {}
    for x in letters:
        head = x.letter.reason.split(":", 1)[0].strip()
        counts[head] = counts.get(head, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
