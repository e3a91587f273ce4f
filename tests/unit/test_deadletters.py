"""Choosing, printing and re-sending dead letters (`shared/deadletters.py`)."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from shared.contracts.deadletter import DeadLetter
from shared.deadletters import (
    REPLAY_HEADER,
    Letter,
    NotReplayable,
    SelectionError,
    choose,
    of_topic,
    parse_letters,
    reasons_count,
    replay_of,
    summary_line,
)


def letter(topic: str = "p.billing.debits", reason: str = "unknown wallet x",
           payload: str = '{"a": 1}', key: str | None = "k", event_id: UUID | None = None,
           offset: int = 0) -> Letter:
    return Letter(offset, DeadLetter(
        event_id=event_id or uuid4(), consumer="wallet", source_topic=topic,
        source_partition=3, source_offset=41, source_key=key, reason=reason, payload=payload))


def test_parse_keeps_each_letter_once_and_skips_what_is_not_a_letter() -> None:
    one, two = letter(), letter()
    raw = [(0, one.letter.model_dump_json().encode()), (1, b"not json"), (2, None),
           (3, one.letter.model_dump_json().encode()), (4, two.letter.model_dump_json().encode())]
    parsed = parse_letters(raw)
    assert [(x.offset, x.letter_id) for x in parsed] == [(0, one.letter_id), (4, two.letter_id)]


def test_of_topic_accepts_the_name_with_or_without_the_prefix() -> None:
    debits, topups = letter("p.billing.debits"), letter("p.wallet.topups")
    assert of_topic([debits, topups], "billing.debits", "p.") == [debits]
    assert of_topic([debits, topups], "p.wallet.topups", "p.") == [topups]
    assert of_topic([debits, topups], None) == [debits, topups]
    assert of_topic([debits, topups], "metering.usage", "p.") == []


def test_choose_by_id_or_unique_prefix_in_order_once() -> None:
    a = letter(event_id=UUID("aaaaaaaa-0000-4000-8000-000000000001"))
    b = letter(event_id=UUID("aaaaaaaa-0000-4000-8000-000000000002"))
    c = letter(event_id=UUID("cccccccc-0000-4000-8000-000000000003"))
    assert choose([a, b, c], [str(c.letter_id), "AAAAAAAA-0000-4000-8000-000000000001",
                              "cccccccc"]) == [c, a]
    with pytest.raises(SelectionError, match="2 dead letters"):
        choose([a, b, c], ["aaaaaaaa"])
    with pytest.raises(SelectionError, match="no dead letter"):
        choose([a, b, c], ["dddddddd"])
    with pytest.raises(SelectionError, match="at least 8"):
        choose([a, b, c], ["ccc"])


def test_replay_is_the_original_record_to_its_partition_with_its_key() -> None:
    x = letter(payload='{"amount": "é"}', key="wallet-1")
    r = replay_of(x)
    assert (r.topic, r.partition, r.key, r.value) == (
        "p.billing.debits", 3, b"wallet-1", '{"amount": "é"}'.encode())
    assert r.headers == ((REPLAY_HEADER, str(x.letter_id).encode()),)
    assert replay_of(letter(key=None)).key is None


def test_a_letter_whose_bytes_were_not_utf8_is_not_replayed() -> None:
    with pytest.raises(NotReplayable, match="not UTF-8"):
        replay_of(letter(payload=b"\xff{}".decode(errors="replace")))


def test_summary_line_is_one_line_with_the_reason_cut() -> None:
    x = letter(reason="invalid message:\n amount: " + "x" * 300)
    line = summary_line(x, width=40)
    assert "\n" not in line
    fields = line.split("\t")
    assert fields[0] == str(x.letter_id) and fields[2] == "wallet"
    assert fields[3] == "p.billing.debits/3@41" and fields[4] == "k"
    assert len(fields[5]) == 40 and fields[5].endswith("…")


def test_reasons_are_counted_by_their_first_clause() -> None:
    letters = [letter(reason="invalid message: a: x"), letter(reason="invalid message: b: y"),
               letter(reason="unknown wallet 1")]
    assert reasons_count(letters) == {"invalid message": 2, "unknown wallet 1": 1}
