"""Provisioning request -> wallet decision latency, through HTTP, at a fixed request rate.

Wallet, provisioning and the vCenter simulator run as uvicorn servers (one process each) on
loopback, on the real broker and database. The bench opens organisations and tops them up
through the wallet's API, then POSTs /vm-requests at `--rate` per second (open loop: a slow
answer does not slow the senders) and watches `wallet.decisions`. Latency is from just before
the POST to the moment the wallet's decision (FundsReserved / FundsRejected) for that request
is read from Kafka. Every tenth organisation has no money, so rejections are measured too.

Also printed: the HTTP answer time, provisioning's intake batching, and the CPU time each
process spent per request (on a small machine the CPU budget is what decides the tail).
With `--stages`, the latency is also split at the Kafka producer timestamps of ReserveFunds
and of the decision; that reads `provisioning.requests` too, a second consumer on the
machine being measured, so it is off by default.

With `--runs N` the whole run is made N times, each on fresh servers, database and topics,
and the last line gives the medians of the runs' rate, p50 and p99.

Usage: python -m bench.provisioning [--count N] [--rate R] [--organisations N] [--warmup N]
                                    [--runs N] [--stages]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import uvloop
from aiokafka import AIOKafkaConsumer

from bench.infra import ServiceProcesses, bench_settings
from deploy.processes import tail
from shared.api_client import client as api_client
from shared.api_keys import issue_key_at
from shared.auth import Role
from shared.settings import Settings
from shared.topics import PROVISIONING_REQUESTS, WALLET_DECISIONS
from shared.webhooks import webhook_headers

SERVICES = ("wallet", "provisioning", "vcenter-simulator")
VMS_PER_FUNDED_ORGANISATION = 1_000
MEDIUM_MONTHLY = 30_000


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


async def healthy(client: httpx.AsyncClient, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await client.get(f"{url}/health")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} is not healthy")


async def open_organisations(client: httpx.AsyncClient, wallet: str, provisioning: str,
                             settings: Settings, count: int) -> list[tuple[str, str]]:
    """(organisation id, its API key); every tenth organisation gets no money, so some
    requests are rejected."""

    async def open_one(n: int) -> tuple[str, str]:
        r = await client.post(f"{wallet}/organisations", json={"name": f"bench-{n}"})
        r.raise_for_status()
        opened = r.json()
        if n % 10 != 9:
            body = json.dumps({"payment_id": f"bench-{uuid4().hex}",
                               "wallet_id": opened["wallet_id"],
                               "amount_minor": VMS_PER_FUNDED_ORGANISATION * MEDIUM_MONTHLY,
                               "status": "succeeded"}).encode()
            r = await client.post(f"{wallet}/webhooks/payments", content=body,
                                  headers=webhook_headers(settings.payment_webhook_secret, body))
            r.raise_for_status()
        key = await issue_key_at(settings.database_url, name=f"bench-{n}",
                                 role=Role.ORGANISATION,
                                 organisation_id=UUID(opened["organisation_id"]))
        return str(opened["organisation_id"]), key

    orgs: list[tuple[str, str]] = []
    for start in range(0, count, 25):
        orgs += await asyncio.gather(*[open_one(n) for n in range(start, min(start + 25, count))])
    for org, _ in orgs:  # provisioning learns of them from WalletOpened on Kafka
        while (await client.get(f"{provisioning}/organisations/{org}")).status_code != 200:
            await asyncio.sleep(0.05)
    return orgs


class LoadClient:
    """Keep-alive HTTP/1.1 POSTs with minimal parsing. httpx costs several ms of CPU per
    request, which on a two-core machine would starve the very servers being measured."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   f"{head}\r\n").encode() + body
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            # The server drops keep-alive connections left idle, so all idle ones are suspect;
            # the Idempotency-Key makes sending the request again on a new one safe.
            for _, writer in self._idle:
                writer.close()
            self._idle.clear()
            return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        try:
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("the server closed the connection")
            status = int(status_line.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self._idle.append((reader, writer))
        return status, answer

    async def close(self) -> None:
        for writer in self._all:
            writer.close()


class DecisionWatcher:
    """Reads wallet.decisions and notes when each request's decision was first seen; also
    the producers' timestamps of ReserveFunds and of the decision, to split the latency."""

    def __init__(self, settings: Settings, stages: bool) -> None:
        self.decisions_topic = settings.topic(WALLET_DECISIONS.name)
        topics = [self.decisions_topic]
        if stages:
            topics.append(settings.topic(PROVISIONING_REQUESTS.name))
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=settings.kafka_bootstrap_servers, auto_offset_reset="earliest",
            enable_auto_commit=False)  # the broker answers a fetch as soon as records arrive
        self.seen: dict[str, tuple[float, str]] = {}
        self.asked_at: dict[str, float] = {}  # ReserveFunds handed to Kafka (producer time)
        self.decided_at: dict[str, float] = {}  # the decision handed to Kafka
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for record in records:
                    message = json.loads(record.value)
                    request_id = message["request_id"]
                    if record.topic != self.decisions_topic:
                        self.asked_at.setdefault(request_id, record.timestamp / 1000)
                        continue
                    self.decided_at.setdefault(request_id, record.timestamp / 1000)
                    self.seen.setdefault(request_id, (now, message["type"]))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


async def run_load(client: LoadClient, orgs: list[tuple[str, str]], count: int, rate: float,
                   tag: str) -> tuple[dict[str, float], list[float], float]:
    """POST `count` requests at `rate`/s; returns send times by request id, HTTP latencies
    and the time the sending took."""
    sent: dict[str, float] = {}
    http_latency: list[float] = []

    async def one(n: int) -> None:
        organisation, key = orgs[n % len(orgs)]
        body = json.dumps({"organisation_id": organisation, "name": f"vm-{n}",
                           "tier": "medium"}).encode()
        started = time.time()
        status, answer = await client.post("/vm-requests", body,
                                           {"Idempotency-Key": f"{tag}-{n}",
                                            "Authorization": f"Bearer {key}"})
        http_latency.append(time.time() - started)
        if status != 202:
            raise RuntimeError(f"request {n}: {status} {answer!r}")
        sent[json.loads(answer)["request_id"]] = started

    begin = time.perf_counter()
    tasks = []
    for n in range(count):
        delay = begin + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    sending = time.perf_counter() - begin
    await asyncio.gather(*tasks)
    return sent, http_latency, sending


async def main(args: argparse.Namespace) -> None:
    figures = []
    for run in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"--- run {run} of {args.runs}")
        figures.append(await one_run(args))
    if args.runs > 1:
        p50s, p99s = [f[1] for f in figures], [f[2] for f in figures]
        print(f"p99 of the {args.runs} runs (ms): " + ", ".join(f"{x:.1f}" for x in p99s))
        print(f"rate_per_s={statistics.median(f[0] for f in figures):.0f} "
              f"p50_ms={statistics.median(p50s):.1f} p99_ms={statistics.median(p99s):.1f} "
              f"runs={args.runs} (medians)")


async def one_run(args: argparse.Namespace) -> tuple[float, float, float]:
    """One run on fresh servers, database and topics: (rate, p50 ms, p99 ms)."""
    logs = Path(tempfile.mkdtemp(prefix="cloudwallet-bench-provisioning-"))
    async with bench_settings() as settings:
        servers = ServiceProcesses(settings, SERVICES, logs)
        watcher = DecisionWatcher(settings, args.stages)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        try:
            servers.start()
            operator = await issue_key_at(settings.database_url, name="bench operator",
                                          role=Role.OPERATOR)
            async with api_client(operator, timeout=30, limits=limits) as client:
                for name in SERVICES:
                    await healthy(client, servers.url(name))
                wallet, provisioning = servers.url("wallet"), servers.url("provisioning")
                orgs = await open_organisations(client, wallet, provisioning, settings,
                                                args.organisations)
                await watcher.start()
                load = LoadClient(provisioning)
                try:
                    warm, _, _ = await run_load(load, orgs, args.warmup, args.rate, "warmup")
                    await wait_for(watcher, warm, 30)
                    cpu_before = servers.cpu_seconds()
                    sent, http_latency, sending = await run_load(load, orgs, args.count,
                                                                 args.rate, "bench")
                    await wait_for(watcher, sent, 60)
                finally:
                    await load.close()
                intake = await intake_figures(client, provisioning)
                cpu = {name: used - cpu_before.get(name, 0.0)
                       for name, used in servers.cpu_seconds().items()}
        except BaseException:
            for name in SERVICES:
                print(f"--- {name} log ---\n{tail(logs / f'{name}.log')}", file=sys.stderr)
            print(f"server logs kept in {logs}", file=sys.stderr)
            raise
        finally:
            await watcher.stop()
            servers.stop()
    shutil.rmtree(logs, ignore_errors=True)

    latencies = [(watcher.seen[r][0] - t) * 1000 for r, t in sent.items()]
    kinds = [watcher.seen[r][1] for r in sent]
    http_ms = [x * 1000 for x in http_latency]
    achieved = args.count / sending
    print(f"requests: {args.count} over {args.organisations} organisations "
          f"(warm-up {args.warmup}); sent in {sending:.2f}s")
    print(f"decisions: {kinds.count('wallet.funds_reserved')} reserved, "
          f"{kinds.count('wallet.funds_rejected')} rejected")
    print(f"HTTP POST /vm-requests: p50 {percentile(http_ms, 50):.1f} ms, "
          f"p99 {percentile(http_ms, 99):.1f} ms")
    print(f"POST -> wallet decision: p50 {percentile(latencies, 50):.1f} ms, "
          f"p90 {percentile(latencies, 90):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
          f"max {max(latencies):.1f} ms")
    if args.stages:
        print_stages(watcher, sent)
    print(intake)
    print("CPU per request (ms): " + ", ".join(
        f"{name} {seconds * 1000 / args.count:.2f}" for name, seconds in cpu.items()))
    print(f"rate_per_s={achieved:.0f} p50_ms={percentile(latencies, 50):.1f} "
          f"p99_ms={percentile(latencies, 99):.1f}")
    return achieved, percentile(latencies, 50), percentile(latencies, 99)


def print_stages(watcher: DecisionWatcher, sent: dict[str, float]) -> None:
    stages = {
        "POST -> ReserveFunds published": [watcher.asked_at[r] - t for r, t in sent.items()],
        "ReserveFunds -> decision published": [watcher.decided_at[r] - watcher.asked_at[r]
                                                for r in sent],
        "decision published -> read": [watcher.seen[r][0] - watcher.decided_at[r] for r in sent],
    }
    print("stages, p50 / p99 (ms; Kafka timestamps have ms resolution): " + "; ".join(
        f"{name} {percentile(values, 50) * 1000:.1f} / {percentile(values, 99) * 1000:.1f}"
        for name, values in stages.items()))


async def intake_figures(client: httpx.AsyncClient, provisioning: str) -> str:
    """Mean batch size and duration of provisioning's intake transactions (its metrics)."""
    text = (await client.get(f"{provisioning}/metrics")).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("cloudwallet_provisioning_intake_"):
            values[name] = float(value)
    batches = values.get("cloudwallet_provisioning_intake_batch_size_count", 0)
    if not batches:
        return "intake: no transactions"
    size = values["cloudwallet_provisioning_intake_batch_size_sum"] / batches
    seconds = values["cloudwallet_provisioning_intake_seconds_sum"] / batches
    slow = batches - values.get('cloudwallet_provisioning_intake_seconds_bucket{le="0.1"}',
                                batches)
    return (f"intake writes: {batches:.0f}, mean {size:.1f} requests each, "
            f"mean {seconds * 1000:.1f} ms each, {slow:.0f} took over 100 ms")


async def wait_for(watcher: DecisionWatcher, requests: dict[str, float], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(r not in watcher.seen for r in requests):
        if time.monotonic() > deadline:
            missing = sum(r not in watcher.seen for r in requests)
            raise TimeoutError(f"{missing} requests got no wallet decision in {timeout}s")
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--organisations", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1,
                        help="runs on fresh servers; the last line gives their medians")
    parser.add_argument("--stages", action="store_true",
                        help="also read provisioning.requests to split the latency in stages")
    uvloop.run(main(parser.parse_args()))
