"""Cluster benchmark (issue 13): what one node and two nodes on one Redis do on this machine.

    .venv/bin/python bench/cluster.py [--configs 1,1k,2k] [--rates 25,50,75,...]
                                      [--seconds 5] [--relay-steps 200,400,...]
                                      [--relay-seconds 5] [--skip-inbound] [--skip-relay]
                                      [--skip-latency] [--latency-rounds 4]

Every node is a `sipbridge serve --redis` (one real redis-server, started here, without
persistence), so the one-node figures include the cluster's own costs (the call log and the
node's calls in Redis, its heartbeat).

Configurations (`--configs`):
- `1`: one node on 127.0.0.1, sipp calling it directly;
- `1k`: one node on 127.0.0.2 behind Kamailio (docs/kamailio-dispatcher.cfg as users run it,
  round-robin) on 127.0.0.1: Kamailio's own share of the machine;
- `2k`: two nodes on 127.0.0.2 and .3 behind that Kamailio.

Inbound calls/s (bench/inbound.py's measure, sipp the one load generator): sipp calls at rising
rates (`-r RATE`, `--seconds` per step, 1 s hold), every call into a room of its own (an
individual dispatch rule), which the node the INVITE lands on creates and owns; the bench
answers each call there as an agent in its own room would (bench/cluster_calls.py: the room's
owner read from Redis, a join on that node's WebSocket, UpdateSubscriptions to the caller's
track through that node's RoomService, which answers the call). So with two nodes each serves
the calls Kamailio gave it, with nothing crossing nodes, and every node pays for the answering
of its own calls. A step counts when every call completed, INVITE->180 p99 stayed under 500 ms
("kept up": the 180 is the node's own first answer, the 100 behind Kamailio is Kamailio's) and
90% of the asked rate was achieved; the figure per configuration is the best such achieved rate
(calls over the span of INVITEs sent). Each step prints each node's CPU and how many rooms each
node got.

The extra latency of a room on another node (`--skip-latency` to leave out; bench/cluster_calls.py
`latency`): two nodes without Kamailio, a direct-rule room on node A held open by one caller;
sipp calls A and B in alternate rounds at 10 calls/s (B proxies its INVITEs to A), each call
answered at once (another SIP participant is in the room): INVITE->200 at the owner and through
the other node; then ListParticipants for that room through A and through B, alternately, one
at a time.

Concurrent relayed calls (bench/media.py's measure): N calls with real RTP both ways, bridged in
pairs (a callee rule: calls 2k and 2k+1 dial one number and meet in one room), N rising until a
step loses a packet, fails a call or a node passes 90% of a core. With two nodes there is one
load generator per node, each placing half the calls straight at its node (a pair must land on
one node: each generator's pair rooms are new rooms on its node; `1k` is not run here: it would
be `1`), run at the same time; node CPU is each node's own over its generator's window, and the
step's figure is the total of calls held.

The machine has 2 cores shared with whatever else runs (load generators, Kamailio, Redis and
other work): compare the configurations inside one run, and read "other" CPU in the output.
Every loop is bounded in count and time; only loopback; every process started is stopped.
Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import Node
from tests.kamailio import Kamailio
from tests.redis_server import RedisServer

from bench import cluster_calls, inbound, media
from bench.common import (
    cpu_seconds,
    keep_or_remove,
    machine_busy,
    print_result,
    run_info,
    self_cpu,
    udp_rcvbuf_errors,
    wait_quiet,
)

CONFIGS = ("1", "1k", "2k")
MAX_STEPS = 20
CPU_STOP_PCT = 90.0
SERVER_ARGS = (
    *("--max-calls", "100000", "--sip-rate", "1000000", "--room-join-rate", "0"),
    *("--log-level", "warning"),
)


class Setup:
    """The nodes (and Kamailio) of one configuration, started and stopped together."""

    def __init__(self, tmp: Path, redis: RedisServer, config: str, *extra: str) -> None:
        count = 2 if config.startswith("2") else 1
        hosts = ["127.0.0.1"] if config == "1" else ["127.0.0.2", "127.0.0.3"][:count]
        self.prefix = prefix = f"bench{secrets.token_hex(3)}:"
        self.config = config
        self.nodes = []
        for i, host in enumerate(hosts):
            directory = tmp / f"{config}-{secrets.token_hex(2)}-n{i}"
            directory.mkdir(parents=True)
            self.nodes.append(Node(directory, f"n{i}", host, redis, prefix, *SERVER_ARGS, *extra))
        self.front = (
            Kamailio(tmp / f"kamailio-{config}-{secrets.token_hex(2)}", [n.sip for n in self.nodes])
            if config.endswith("k")
            else None
        )

    @property
    def sip_port(self) -> int:
        """Where sipp calls (always on 127.0.0.1: the node itself, or Kamailio)."""
        return self.front.port if self.front is not None else self.nodes[0].sip_port

    @property
    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if self.front is not None:
            self.front.start()

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        for node in self.nodes:
            node.finish(timeout=60)


# -- inbound calls/s ----------------------------------------------------------------------------


async def inbound_steps(setup: Setup, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rates = [int(r) for r in args.rates.split(",") if r.strip()][:MAX_STEPS]
    apis = cluster_calls.clients(setup.nodes)
    first = apis[setup.nodes[0].node_id]
    steps: list[dict[str, Any]] = []
    try:
        await cluster_calls.setup_rules(first)  # shared by every node through Redis
        await asyncio.sleep(0.5)  # (the rules reach the other node within 100 ms)
        async with cluster_calls.Answerers.open(setup.nodes, apis, setup.prefix) as answerers:
            pids = setup.pids
            kamailio_pid = setup.front.proc.pid if setup.front and setup.front.proc else 0
            for i, rate in enumerate(rates):
                calls = max(1, int(rate * args.seconds))
                quiet = before_step(setup, args)
                per_node0 = [cpu_seconds(p) for p in pids]
                front0 = _group_cpu(kamailio_pid)
                bench0, busy0, drops = self_cpu(), machine_busy(), udp_rcvbuf_errors()
                landed0, failed0 = Counter(answerers.landed), answerers.failed
                run, _ = await asyncio.gather(
                    inbound.run_sipp(
                        work / f"{setup.config}-step{i}",
                        setup.sip_port,
                        rate=rate,
                        calls=calls,
                        hold_ms=args.hold_ms,
                        step=i,
                    ),
                    answerers.run(i, rate, calls, args.hold_ms),
                )
                per_node = [cpu_seconds(p) - c for p, c in zip(pids, per_node0, strict=True)]
                figures = inbound.step_figures(
                    rate=rate,
                    run=run,
                    sub=cast(inbound.Subscriber, answerers),  # (its seen and asked are read)
                    server_cpu_s=sum(per_node),
                    bench_cpu_s=self_cpu() - bench0,
                    rss=sum(inbound.rss_kib(p) for p in pids),
                    udp_drops=udp_rcvbuf_errors() - drops,
                )
                cpu = figures["cpu_pct"]
                assert isinstance(cpu, dict)
                cpu["kamailio"] = round((_group_cpu(kamailio_pid) - front0) / run.wall_s * 100, 1)
                busy = (machine_busy() - busy0) / run.wall_s * 100
                cpu["machine"] = round(busy, 1)
                cpu["other"] = round(
                    max(0.0, busy - sum(v for k, v in cpu.items() if k not in ("machine",))), 1
                )
                cpu["per_node"] = [round(c / run.wall_s * 100, 1) for c in per_node]
                figures["other_cpu_pct_before"] = quiet
                figures["rooms_per_node"] = {
                    n.node_id: answerers.landed[n.node_id] - landed0[n.node_id] for n in setup.nodes
                }
                figures["answerers_failed"] = answerers.failed - failed0
                # Kept up: judged on INVITE->180, the node's own first answer (behind Kamailio
                # the 100 Trying is Kamailio's), p99 under bench/inbound.py's 500 ms, and 90% of
                # the asked rate achieved (sipp falls behind its schedule when answers lag).
                p99_180 = figures["invite_180_ms"]["p99"]  # type: ignore[index]
                figures["kept_up"] = bool(
                    figures["ok"]
                    and p99_180 is not None
                    and p99_180 < inbound.KEPT_UP_P99_MS
                    and figures["calls_per_s"] >= 0.9 * rate  # type: ignore[operator]
                )
                steps.append(figures)
                print(
                    f"[{setup.config}] " + inbound._row(figures) + f"  per node CPU % "
                    f"{'/'.join(map(str, cpu['per_node']))}, rooms "
                    f"{'/'.join(map(str, figures['rooms_per_node'].values()))}",  # type: ignore[attr-defined]
                    file=sys.stderr,
                    flush=True,
                )
                figures["left_in_rooms"] = left = await cluster_calls.wait_drained(first, 30)
                if not figures["kept_up"] or left:
                    break
    finally:
        for client in apis.values():
            await client.aclose()
    best = max((s["calls_per_s"] for s in steps if s["kept_up"]), default=0.0)
    return {"steps": steps, "best_calls_per_s": best}


def _group_cpu(pid: int) -> float:
    """CPU seconds of Kamailio: its main process and its children (by parent pid)."""
    if not pid:
        return 0.0
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += cpu_seconds(int(entry.name))
    return total


def before_step(setup: Setup, args: argparse.Namespace) -> float | None:
    """Wait (bounded) for Kamailio to count every node up - a probe lost on the busy machine
    takes a node out for a second - and for a quieter second on the machine; the share of a
    core other processes used then (None when not waited for)."""
    if setup.front is not None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: 10 s of 0.1 s polls
            if all(f.startswith("A") for f in setup.front.targets().values()):
                break
            time.sleep(0.1)
    if args.quiet_wait <= 0:
        return None
    return wait_quiet(args.quiet_wait, setup.pids)


# -- concurrent relayed calls ---------------------------------------------------------------


def relay_steps(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    totals = [int(x) for x in args.relay_steps.split(",") if x.strip()][:MAX_STEPS]
    count = len(setup.nodes)
    asyncio.run(media.create_rule(setup.nodes[0].url))
    time.sleep(0.5)  # (the rule reaches the other node within 100 ms)
    gen_args = argparse.Namespace(warmup=1.0, cps=args.cps / count, slots=20)
    base_n = 100
    baseline = media.run_generator(calls=base_n, seconds=2.0, args=gen_args, step=0, direct=True)
    steps: list[dict[str, Any]] = []
    for i, total in enumerate(totals):
        per_node = max(2, (total // count) // 2 * 2)
        quiet = before_step(setup, args)
        before = [media.scrape(n.url) for n in setup.nodes]
        results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * count

        def one(
            k: int,
            node: Node,
            step: int,
            results: list[dict[str, Any] | BaseException] = results,
            per_node: int = per_node,
        ) -> None:
            assert node.proc is not None
            try:
                results[k] = media.run_generator(
                    calls=per_node,
                    seconds=args.relay_seconds,
                    args=gen_args,
                    step=step,
                    server_sip=node.sip,
                    server_pid=node.proc.pid,
                )
            except Exception as exc:  # reported in the step's figures
                results[k] = exc

        threads = [
            threading.Thread(target=one, args=(k, node, 1 + i * count + k))
            for k, node in enumerate(setup.nodes)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=per_node / gen_args.cps * 2 + args.relay_seconds + 120)
        per: list[dict[str, Any]] = []
        for k, node in enumerate(setup.nodes):
            result = results[k]
            if isinstance(result, BaseException):
                per.append({"error": str(result)[-500:]})
                continue
            media.wait_drained(node.url, 15)
            figures = media.step_figures(
                per_node, result, baseline, media.media_deltas(before[k], media.scrape(node.url))
            )
            figures.pop("generator", None)
            figures["answered"] = result["answered"]
            figures["recv_jitter_p99_ms"] = result["recv_jitter_ms"]["p99"]  # type: ignore[index]
            per.append(figures)
        ok = all(
            "error" not in f and f["calls_ok"] and f["lost"] == 0 and f["server_cpu_pct"] <= 90
            for f in per
        )
        step = {"calls": per_node * count, "per_node": per, "ok": ok, "other_cpu_pct_before": quiet}
        steps.append(step)
        cpus = "/".join(str(f.get("server_cpu_pct", "-")) for f in per)
        lost = sum(int(f.get("lost", 0)) for f in per)
        others = "/".join(str(f.get("other_cpu_pct", "-")) for f in per)
        answered = "/".join(f"{f.get('answered', 0)}" for f in per)
        print(
            f"[{setup.config}] relayed {per_node * count:>5} calls: answered {answered}, node CPU "
            f"% {cpus}, lost {lost}, other CPU % {others}, ok {ok}",
            file=sys.stderr,
            flush=True,
        )
        if not ok:
            break
    best = max((s["calls"] for s in steps if s["ok"]), default=0)
    return {"steps": steps, "best_calls": best, "baseline_latency_ms": baseline["latency_ms"]}


# -- the run --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="of 1, 1k, 2k")
    parser.add_argument("--rates", default="25,50,75,100,125,150,175,200,250,300,350,400")
    parser.add_argument("--seconds", type=float, default=5.0, help="per inbound rate step")
    parser.add_argument("--hold-ms", type=int, default=1000)
    parser.add_argument("--relay-steps", default="200,400,600,800,1000,1200")
    parser.add_argument("--relay-seconds", type=float, default=5.0)
    parser.add_argument("--cps", type=float, default=200.0, help="relayed calls set up per s")
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="s to wait for a quiet machine per step"
    )
    parser.add_argument("--skip-inbound", action="store_true")
    parser.add_argument("--skip-relay", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-rounds", type=int, default=4, help="per node, alternated")
    parser.add_argument("--latency-calls", type=int, default=40, help="per round")
    parser.add_argument("--latency-requests", type=int, default=100, help="per node")
    parser.add_argument("--keep", action="store_true", help="keep logs and traces")
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    if not set(configs) <= set(CONFIGS) or not shutil.which("sipp"):
        print(f"--configs of {CONFIGS}; sipp (sip-tester) and kamailio required", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 60 or not 0 < args.relay_seconds <= 60:
        print("--seconds and --relay-seconds in (0, 60]", file=sys.stderr)
        return 2
    if not (
        0 < args.latency_rounds <= 20
        and 0 < args.latency_calls <= 1000
        and 0 < args.latency_requests <= 10_000
    ):
        print("--latency-rounds <= 20, --latency-calls <= 1000, --latency-requests <= 10000")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    redis = RedisServer(tmp / "redis")
    results: dict[str, dict[str, Any]] = {"inbound": {}, "relayed": {}, "latency": {}}
    rtp_range = media.choose_rtp_range("")
    try:
        redis.start()
        for config in configs:
            if not args.skip_inbound:
                setup = Setup(tmp, redis, config)
                try:
                    setup.start()
                    results["inbound"][config] = cluster_calls.run_loop(
                        inbound_steps(setup, args, tmp)
                    )
                finally:
                    setup.stop()
            if not args.skip_relay and config != "1k":  # (its generators bypass Kamailio)
                setup = Setup(tmp, redis, config, "--rtp-ports", rtp_range)
                try:
                    setup.start()
                    results["relayed"][config] = relay_steps(setup, args)
                finally:
                    setup.stop()
        if not args.skip_latency:
            setup = Setup(tmp, redis, "2")
            try:
                setup.start()
                results["latency"] = cluster_calls.run_loop(
                    cluster_calls.latency(
                        *setup.nodes,
                        tmp / "latency",
                        rounds=args.latency_rounds,
                        calls=args.latency_calls,
                        rate=10,
                        requests=args.latency_requests,
                    )
                )
            finally:
                setup.stop()
    finally:
        redis.stop()
        keep_or_remove(tmp, args.keep)
    summary: dict[str, Any] = {}
    for kind, key in (("inbound", "best_calls_per_s"), ("relayed", "best_calls")):
        best = {c: r[key] for c, r in results[kind].items()}
        summary[kind] = best
        if best.get("1") and "2k" in best:
            summary[f"{kind}_2_nodes_over_1"] = round(best["2k"] / best["1"], 2)
        if best.get("1k") and "2k" in best:
            summary[f"{kind}_2_nodes_over_1_behind_kamailio"] = round(best["2k"] / best["1k"], 2)
    print("configuration  inbound calls/s (kept up)  concurrent relayed calls (no loss)")
    for config in configs:
        print(
            f"{config:<14} {summary['inbound'].get(config, '-')!s:>25}"
            f"  {summary['relayed'].get(config, '-')!s:>34}"
        )
    for kind in ("inbound", "relayed"):
        ratio = summary.get(f"{kind}_2_nodes_over_1")
        if ratio is not None:
            print(f"{kind}: 2 nodes / 1 node = {ratio} (goal >= 1.7)")
    behind = summary.get("inbound_2_nodes_over_1_behind_kamailio")
    if behind is not None:
        print(f"inbound: 2 nodes / 1 node, both behind Kamailio = {behind}")
    lat = results["latency"]
    if lat:
        inv, lst = lat["invite_200_ms"], lat["list_participants_ms"]
        print(
            f"a room on another node: INVITE->200 p50/p99 {inv['at_owner']['p50']}/"
            f"{inv['at_owner']['p99']} ms at the owner, {inv['via_other']['p50']}/"
            f"{inv['via_other']['p99']} ms through the other node "
            f"(+{lat['invite_200_extra_p50_ms']} ms); ListParticipants "
            f"{lst['at_owner']['p50']}/{lst['at_owner']['p99']} ms, "
            f"{lst['via_other']['p50']}/{lst['via_other']['p99']} ms "
            f"(+{lat['list_participants_extra_p50_ms']} ms)"
        )
    print_result(
        {
            **run_info("cluster"),
            "seconds_per_step": args.seconds,
            "relay_seconds": args.relay_seconds,
            **summary,
            "results": results,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
