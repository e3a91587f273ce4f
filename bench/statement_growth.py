"""Reads that grow with the age of the system, found in PostgreSQL's own statistics
(`pg_stat_statements`): per simulated month, each statement's calls, the rows it returned or
wrote and the buffer pages it touched. A statement's pages per row (per call when it returns
fewer rows than calls, as a sum does) that grow by more than half from the first full month
it ran in to the last one mean it reads state that grows with age; a batch statement that
merely handled bigger batches does not show, as its rows grew with its pages. This is issue #18's
EXPLAIN check over every statement the services ran, not a hand-picked few; the embedded
PostgreSQL loads the extension (deploy/postgres_server.py), another server may not."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import asyncpg

MIN_CALLS = 20  # fewer calls in a month say little about pages per call
MIN_PAGES = 20  # pages per unit below this cost nothing worth a look
GROWTH = 1.5


@dataclass(frozen=True)
class Growth:
    query: str
    first_month: date
    first_pages: float  # per row, or per call for fewer rows than calls
    last_pages: float

    @property
    def ratio(self) -> float:
        return self.last_pages / max(self.first_pages, 1e-9)


def pages_per_unit(calls: int, rows: int, pages: int) -> float:
    return pages / max(calls, rows, 1)


@dataclass
class StatementMonths:
    available: bool = False
    text: dict[int, str] = field(default_factory=dict)
    # month -> statement -> [calls, rows, pages]
    months: dict[date, dict[int, list[int]]] = field(default_factory=dict)
    _last: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    async def enable(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.fetchval("SELECT count(*) FROM pg_stat_statements")
        except asyncpg.PostgresError:
            return  # not preloaded on this server: the report says so
        self.available = True
        await self.sample(conn, None)

    async def sample(self, conn: asyncpg.Connection, day_start: datetime | None) -> None:
        """Totals so far; the difference since the last sample goes to the month of the day
        that ended at `day_start` (None: the starting point)."""
        if not self.available:
            return
        rows = await conn.fetch(
            """SELECT queryid, sum(calls)::bigint AS calls, sum(rows)::bigint AS rows,
                      sum(shared_blks_hit + shared_blks_read)::bigint AS pages,
                      min(query) AS query
               FROM pg_stat_statements
               WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND query NOT LIKE '%pg_stat_statements%'
               GROUP BY queryid""")
        month = None
        if day_start is not None:
            ended = (day_start - timedelta(microseconds=1)).date()
            month = self.months.setdefault(date(ended.year, ended.month, 1), {})
        for r in rows:
            now = (int(r["calls"]), int(r["rows"]), int(r["pages"]))
            before = self._last.get(r["queryid"], (0, 0, 0))
            self._last[r["queryid"]] = now
            self.text.setdefault(r["queryid"], " ".join(r["query"].split()))
            if month is not None and now[0] > before[0]:
                totals = month.setdefault(r["queryid"], [0, 0, 0])
                for i in range(3):
                    totals[i] += now[i] - before[i]

    def compared(self, months: list[date]) -> list[tuple[int, date]]:
        """Statements that ran at least MIN_CALLS times in the last of `months` (the full
        months) and in an earlier one, with the first such month."""
        if len(months) < 2:
            return []
        last = self.months.get(months[-1], {})
        found = []
        for queryid, (calls, _, _) in last.items():
            first = next((m for m in months[:-1]
                          if self.months.get(m, {}).get(queryid, [0])[0] >= MIN_CALLS), None)
            if calls >= MIN_CALLS and first is not None:
                found.append((queryid, first))
        return found

    def growth(self, months: list[date]) -> list[Growth]:
        """The compared statements whose pages per row grew by more than GROWTH, largest
        growth first."""
        found = []
        for queryid, first in self.compared(months):
            g = Growth(self.text[queryid], first,
                       pages_per_unit(*self.months[first][queryid]),
                       pages_per_unit(*self.months[months[-1]][queryid]))
            if g.last_pages >= MIN_PAGES and g.ratio > GROWTH:
                found.append(g)
        return sorted(found, key=lambda g: -g.ratio)

    def report(self, months: list[date]) -> list[str]:
        if not self.available:
            return ["statement reads by month: pg_stat_statements is not loaded on this "
                    "server (the embedded one loads it)"]
        grown = self.growth(months)
        lines = [f"statement reads by month (pg_stat_statements): {len(self.compared(months))} "
                 f"statements compared, the last full month against the first they ran in; "
                 f"pages per row grown more than {GROWTH}x (to at least {MIN_PAGES}): "
                 f"{len(grown)}"]
        lines += [f"  {g.ratio:6.1f}x  {g.first_pages:9.1f} -> {g.last_pages:9.1f} pages/row "
                  f"(from {g.first_month:%Y-%m})  {g.query[:110]}" for g in grown[:15]]
        return lines
