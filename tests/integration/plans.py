"""Run a repository function and keep the plan PostgreSQL used for each of its reads: a test
of bounded reads then runs the real SQL, not a copy of it that could drift."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg


@dataclass
class Plan:
    sql: str
    root: dict[str, Any]

    def nodes(self) -> Iterator[dict[str, Any]]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.get("Plans", []))

    def seq_scans(self) -> set[str]:
        return {n["Relation Name"] for n in self.nodes() if n["Node Type"] == "Seq Scan"}

    def rows_read(self, relation: str) -> int:
        """Rows the scans of `relation` returned, over all their loops."""
        return sum(int(n.get("Actual Rows", 0)) * int(n.get("Actual Loops", 1))
                   for n in self.nodes() if n.get("Relation Name") == relation)


@dataclass
class PlanRecorder:
    """Stands in for an asyncpg connection: each `fetch` is run once under EXPLAIN ANALYZE
    (its plan kept), then for real. Only for reads: ANALYZE executes the statement."""

    conn: asyncpg.Connection
    plans: list[Plan] = field(default_factory=list)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        explained = await self.conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
        self.plans.append(Plan(sql, json.loads(explained)[0]["Plan"]))
        return await self.conn.fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self.conn.execute(sql, *args)

    def seq_scans(self) -> set[str]:
        return set().union(*(p.seq_scans() for p in self.plans))

    def rows_read(self, relation: str) -> int:
        return sum(p.rows_read(relation) for p in self.plans)
