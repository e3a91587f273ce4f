"""`BackgroundCommits`: one commit in flight, later batches' offsets merged into the next,
each partition's offset the one after its batch's last record, and a failed commit
neither raised nor retried (those records come again; consumers are idempotent)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from shared.consumer import BackgroundCommits, _Rebalance, assigned_offsets, rewind


def record(partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord("t", partition, offset, 0, 0, None, b"", None, 0, 0, ())


class SlowConsumer:
    def __init__(self, fail: bool = False) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.release = asyncio.Event()
        self.fail = fail
        self.revoked: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", p) for p in range(3)} - self.revoked

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        await self.release.wait()
        if self.fail:
            raise RuntimeError("rebalanced")


async def test_offsets_of_later_batches_merge_into_the_next_commit():
    consumer = SlowConsumer()
    commits = BackgroundCommits()
    commits.after(consumer, (record(0, 4), record(1, 9)))
    await asyncio.sleep(0)  # the first commit is in flight
    commits.after(consumer, (record(0, 5),))
    commits.after(consumer, (record(0, 7), record(2, 1)))
    consumer.release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert consumer.commits == [
        {TopicPartition("t", 0): 5, TopicPartition("t", 1): 10},
        {TopicPartition("t", 0): 8, TopicPartition("t", 2): 2},
    ]


async def test_a_failed_commit_is_logged_not_raised():
    consumer = SlowConsumer(fail=True)
    commits = BackgroundCommits()
    commits.after(consumer, (record(0, 1),))
    consumer.release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert consumer.commits == [{TopicPartition("t", 0): 2}]
    commits.after(consumer, (record(0, 2),))  # a later batch commits again
    for _ in range(3):
        await asyncio.sleep(0)
    assert consumer.commits[-1] == {TopicPartition("t", 0): 3}


class AssignedConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self.assigned:
            raise AssertionError("aiokafka raises IllegalStateError for a partition not assigned")
        self.seeks.append((tp, offset))


async def test_partitions_revoked_meanwhile_are_left_out_of_the_commit():
    consumer = SlowConsumer()
    consumer.revoked = {TopicPartition("t", 1)}
    consumer.release.set()
    commits = BackgroundCommits()
    commits.after(consumer, (record(0, 4), record(1, 9)))
    for _ in range(3):
        await asyncio.sleep(0)
    assert consumer.commits == [{TopicPartition("t", 0): 5}]
    assert assigned_offsets(consumer, (record(1, 2), record(2, 6))) == {TopicPartition("t", 2): 7}


def test_a_failed_batch_rewinds_each_assigned_partition_to_its_first_record():
    consumer = AssignedConsumer({TopicPartition("t", 0), TopicPartition("t", 2)})
    rewind(consumer, (record(0, 7), record(1, 3), record(0, 5), record(2, 9)))
    assert sorted(consumer.seeks) == [(TopicPartition("t", 0), 5), (TopicPartition("t", 2), 9)]


async def test_partitions_being_revoked_wait_for_the_commits_due():
    consumer = SlowConsumer()
    commits = BackgroundCommits()
    assigned: list[bool] = []
    listener = _Rebalance(lambda: assigned.append(True), commits)
    commits.after(consumer, (record(0, 4),))
    await asyncio.sleep(0)  # the commit is in flight
    commits.after(consumer, (record(1, 2),))
    revoking = asyncio.create_task(listener.on_partitions_revoked(set()))
    await asyncio.sleep(0)
    assert not revoking.done()  # the rebalance waits for the commits
    consumer.release.set()
    await asyncio.wait_for(revoking, 1)
    assert consumer.commits == [{TopicPartition("t", 0): 5}, {TopicPartition("t", 1): 3}]
    await listener.on_partitions_assigned(set())
    assert assigned == [True]
    await _Rebalance(None, None).on_partitions_revoked(set())  # nothing to flush


async def test_a_flush_commits_what_a_failed_commit_left_due():
    consumer = SlowConsumer(fail=True)
    commits = BackgroundCommits()
    commits.after(consumer, (record(0, 1),))
    await asyncio.sleep(0)  # in flight, and about to fail
    commits.after(consumer, (record(0, 2),))  # due after it, with no commit running then
    consumer.release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    consumer.fail = False
    await commits.flush()
    assert consumer.commits[-1] == {TopicPartition("t", 0): 3}


async def test_a_flush_under_load_waits_for_what_is_due_now_not_for_later_batches():
    class Busy(SlowConsumer):
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            self.commits.append(dict(offsets))
            await asyncio.sleep(0.005)  # slower than batches come: offsets are always due

    consumer = Busy()
    commits = BackgroundCommits()
    commits.FLUSH_TIMEOUT_S = 30.0  # a flush that waited for the load to stop never returns
    offset = 0

    async def load() -> None:
        nonlocal offset
        while True:
            commits.after(consumer, (record(0, offset),))
            offset += 1
            await asyncio.sleep(0.001)

    loading = asyncio.create_task(load())
    try:
        await asyncio.sleep(0.05)
        due_now = offset
        await asyncio.wait_for(commits.flush(), 5)  # returns while the load goes on
        assert not loading.done()
        assert max(c[TopicPartition("t", 0)] for c in consumer.commits) >= due_now
    finally:
        loading.cancel()
