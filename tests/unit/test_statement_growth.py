"""The benchmark's check for reads that grow with age (bench/statement_growth.py): pages per
row, so a batch statement handling bigger batches is not taken for one reading more."""

from __future__ import annotations

from datetime import date

from bench.statement_growth import StatementMonths

JULY, AUGUST, DECEMBER = date(2026, 7, 1), date(2026, 8, 1), date(2026, 12, 1)
FULL = [JULY, AUGUST, DECEMBER]


def months(**by_month: dict[int, list[int]]) -> StatementMonths:
    s = StatementMonths(available=True)
    s.text = {1: "SELECT sum(amount) FROM ledger", 2: "INSERT INTO inbox", 3: "SELECT rare"}
    names = {"july": JULY, "august": AUGUST, "december": DECEMBER, "june": date(2026, 6, 1)}
    s.months = {names[k]: v for k, v in by_month.items()}
    return s


def test_a_sum_reading_ever_more_pages_per_call_is_found():
    s = months(july={1: [100, 100, 3_000]}, december={1: [100, 100, 24_000]})
    [grown] = s.growth(FULL)
    assert grown.query.startswith("SELECT sum") and grown.ratio == 8.0
    assert grown.first_month == JULY


def test_a_batch_insert_with_bigger_batches_is_not():
    # 10x the rows per call and 10x the pages: the same pages per row
    s = months(july={2: [100, 1_000, 3_000]}, december={2: [100, 10_000, 30_000]})
    assert s.growth(FULL) == []
    assert len(s.compared(FULL)) == 1


def test_the_partial_month_before_the_first_full_one_is_not_the_baseline():
    s = months(june={1: [50, 50, 100]}, july={1: [100, 100, 3_000]},
               december={1: [100, 100, 3_300]})
    assert s.growth(FULL) == []  # against June it would be 16.5x


def test_statements_run_rarely_are_not_compared_and_small_reads_not_reported():
    s = months(july={3: [5, 5, 5], 1: [100, 100, 100]}, december={3: [5, 5, 500],
                                                                 1: [100, 100, 1_000]})
    assert [q for q, _ in s.compared(FULL)] == [1]
    assert s.growth(FULL) == []  # 10 pages per row: below what is worth a look


def test_a_statement_first_run_in_a_later_month_is_compared_from_there():
    s = months(august={1: [100, 100, 2_000]}, december={1: [100, 100, 6_000]})
    [grown] = s.growth(FULL)
    assert grown.first_month == AUGUST and grown.ratio == 3.0
