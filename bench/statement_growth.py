"""Reads that grow with the age of the system, found in PostgreSQL's own statistics
(`pg_stat_statements`): per simulated month, each statement's calls and the buffer pages
it touched. A statement whose pages per call in the last month exceed those of the first
month it ran in by more than half reads state that grows with age. This is issue #18's
EXPLAIN check over every statement the services ran, not a hand-picked few; the embedded
PostgreSQL loads the extension (deploy/postgres_server.py), another server may not."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import asyncpg

MIN_CALLS = 20  # fewer calls in a month say little about pages per call
MIN_PAGES_PER_CALL = 50  # below this a growth costs nothing worth a look
GROWTH = 1.5


@dataclass(frozen=True)
class Growth:
    query: str
    first_month: date
    first_pages_per_call: float
    last_pages_per_call: float

    @property
    def ratio(self) -> float:
        return self.last_pages_per_call / max(self.first_pages_per_call, 1e-9)


@dataclass
class StatementMonths:
    available: bool = False
    text: dict[int, str] = field(default_factory=dict)
    months: dict[date, dict[int, list[int]]] = field(default_factory=dict)  # [calls, pages]
    _last: dict[int, tuple[int, int]] = field(default_factory=dict)

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
            """SELECT queryid, sum(calls)::bigint AS calls,
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
            calls, pages = int(r["calls"]), int(r["pages"])
            before = self._last.get(r["queryid"], (0, 0))
            self._last[r["queryid"]] = (calls, pages)
            self.text.setdefault(r["queryid"], " ".join(r["query"].split()))
            if month is not None and calls > before[0]:
                totals = month.setdefault(r["queryid"], [0, 0])
                totals[0] += calls - before[0]
                totals[1] += pages - before[1]

    def growth(self) -> list[Growth]:
        """Statements whose pages per call grew by more than GROWTH from the first month
        they ran in (at least MIN_CALLS times) to the last month, largest growth first."""
        months = sorted(self.months)
        if len(months) < 2:
            return []
        last = self.months[months[-1]]
        found = []
        for queryid, (calls, pages) in last.items():
            if calls < MIN_CALLS:
                continue
            first = next((m for m in months[:-1]
                          if self.months[m].get(queryid, [0, 0])[0] >= MIN_CALLS), None)
            if first is None:
                continue
            first_calls, first_pages = self.months[first][queryid]
            g = Growth(self.text[queryid], first, first_pages / first_calls, pages / calls)
            if g.last_pages_per_call >= MIN_PAGES_PER_CALL and g.ratio > GROWTH:
                found.append(g)
        return sorted(found, key=lambda g: -g.ratio)

    def compared(self) -> int:
        """Statements seen often enough in the last month and an earlier one to compare."""
        months = sorted(self.months)
        if len(months) < 2:
            return 0
        earlier = {q for m in months[:-1] for q, (c, _) in self.months[m].items()
                   if c >= MIN_CALLS}
        return sum(1 for q, (c, _) in self.months[months[-1]].items()
                   if c >= MIN_CALLS and q in earlier)

    def report(self) -> list[str]:
        if not self.available:
            return ["statement reads by month: pg_stat_statements is not loaded on this "
                    "server (the embedded one loads it)"]
        grown = self.growth()
        lines = [f"statement reads by month (pg_stat_statements): {self.compared()} statements "
                 f"compared, last month against the first they ran in; pages per call grown "
                 f"more than {GROWTH}x (and at least {MIN_PAGES_PER_CALL}): {len(grown)}"]
        lines += [f"  {g.ratio:6.1f}x  {g.first_pages_per_call:9.0f} -> "
                  f"{g.last_pages_per_call:9.0f} pages/call (from {g.first_month:%Y-%m})  "
                  f"{g.query[:110]}" for g in grown[:15]]
        return lines
