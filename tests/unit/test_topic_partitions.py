"""Partition counts as a setting (`TOPIC_PARTITIONS`), checked against the topic map."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.topics import partition_counts


def test_counts_parse_per_topic_name():
    assert partition_counts("") == {}
    assert partition_counts("vcenter.events=12, metering.usage=24") == {
        "vcenter.events": 12, "metering.usage": 24}


@pytest.mark.parametrize(("setting", "reason"), [
    ("nope=3", "no topic 'nope'"),
    ("clock.ticks=2", "one partition by design"),
    ("deadletter=2", "one partition by design"),
    ("wallet.events=0", "positive partition count"),
    ("wallet.events=x", "positive partition count"),
])
def test_bad_counts_are_refused_naming_why(setting, reason):
    with pytest.raises(ValueError, match=reason):
        partition_counts(setting)


def test_a_process_started_with_the_setting_uses_its_counts_everywhere():
    done = subprocess.run(
        [sys.executable, "-c", "from shared import topics; print(topics.VCENTER_EVENTS."
         "partitions, [t.partitions for t in topics.ALL_TOPICS if t.name == 'vcenter.events'],"
         " topics.METERING_USAGE.partitions)"],
        env={**os.environ, "TOPIC_PARTITIONS": "vcenter.events=12"}, capture_output=True,
        text=True, check=True)
    assert done.stdout.split() == ["12", "[12]", "6"]
