"""`sipbridge serve`: wires the store, the rooms model, the APIs and webhooks into one process."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from livekit.protocol import sip as proto

from sipbridge import __version__
from sipbridge.config import HostPort, Settings
from sipbridge.errors import ApiError
from sipbridge.rooms import RoomRegistry
from sipbridge.server.agents import AgentService
from sipbridge.server.api import metrics
from sipbridge.server.api.call_log_api import CallLogApi
from sipbridge.server.api.http_errors import HttpErrors
from sipbridge.server.api.node_api import NodeApi
from sipbridge.server.api.room_api import RoomApi
from sipbridge.server.api.scraped import scraped_samples
from sipbridge.server.api.sip_api import SipApi
from sipbridge.server.api.stalled_writes import StalledWrites
from sipbridge.server.api.trace_api import TraceApi
from sipbridge.server.api.twirp import PREFIX, TwirpServer
from sipbridge.server.api.webhooks import RetryPolicy, WebhookNotifier
from sipbridge.server.calls.inbound import InboundCalls
from sipbridge.server.calls.inbound_auth import TrunkAuth
from sipbridge.server.calls.live_call import CallServices
from sipbridge.server.calls.outbound import OutboundCalls
from sipbridge.server.calls.room_limits import RoomLimits
from sipbridge.server.calls.transfers import Transfers
from sipbridge.server.cluster.wiring import ClusterRooms
from sipbridge.server.collector import Collector, tune_collector
from sipbridge.server.console_api import ConsoleApi
from sipbridge.server.console_web import ConsoleFiles
from sipbridge.server.load_probe import LoadProbe
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.server.media.service import MediaService
from sipbridge.server.node_calls import NodeCalls
from sipbridge.server.nodes import Heartbeat, redis_nodes
from sipbridge.server.recording.records import EgressRecords
from sipbridge.server.recording.service import EgressService
from sipbridge.server.rtc.aiortc_patches import (
    bind_ice_ports,
    deliver_audio_promptly,
    restrict_host_addresses,
    use_waveform_opus,
)
from sipbridge.server.rtc.signal import SignalServer
from sipbridge.server.sip.registrations import Registrations
from sipbridge.server.sip.transport import Listen, SipService, tls_context
from sipbridge.server.sip.user_agent import SipUserAgent
from sipbridge.server.state.call_log import CallLog
from sipbridge.server.state.rooms_runtime import RoomsRuntime, wall_clock
from sipbridge.server.state.trunk_cache import SipConfig
from sipbridge.sip.admission import Admission
from sipbridge.sip.digest import DigestServer
from sipbridge.store import RecordStore, SQLiteStore
from sipbridge.store.redis import RedisStore, redacted
from sipbridge.telephony.auth_guard import AuthGuard
from sipbridge.telephony.drain import Drain, DrainStarted
from sipbridge.telephony.load import LoadGate, LoadLimits
from sipbridge.telephony.node_info import NodeInfo

log = logging.getLogger("sipbridge")

# A step of the teardown that talks to something else (Redis, peers, clients) gets this long;
# past it the node goes on stopping and says which step hung (the stores' own steps, which
# write data, are not cut).
STOP_STEP_S = 5.0
HTTP_SHUTDOWN_S = 3.0  # requests still running when the API stops (aiohttp's default: 60 s)


async def bounded_step(what: str, step: Awaitable[object], limit: float = STOP_STEP_S) -> bool:
    """Await one step of a node's teardown for at most `limit` seconds: False (logged, naming
    the step) when it had to be cut short."""
    try:
        async with asyncio.timeout(limit):
            await step
    except TimeoutError:
        log.warning("stopping: %s took more than %g s; cut short", what, limit)
        return False
    return True


class Server:
    """One sipbridge node. `start()` binds and returns; `stop()` shuts down cleanly."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = wall_clock,
        webhook_retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.store: RecordStore = (
            RedisStore(
                settings.redis,
                prefix=settings.redis_prefix,
                call_log_max=settings.call_log_max,
            )
            if settings.redis
            else SQLiteStore(settings.db)
        )
        self.sip_config = SipConfig(self.store, clock)
        key, secret = settings.webhook_key
        self.webhooks = WebhookNotifier(settings.webhooks, key, secret, retry=webhook_retry)
        self.rooms = RoomsRuntime(RoomRegistry(), self.webhooks, clock)
        self.twirp = TwirpServer(dict(settings.keys), body_timeout=settings.http_idle_timeout)
        self.http_errors = HttpErrors()
        self.stalled_writes = StalledWrites(settings.http_idle_timeout)
        self.metrics = metrics.Metrics(self.samples)
        limits = LoadLimits(max_cpu=settings.max_cpu, max_lag=settings.max_lag_ms / 1000)
        self.load_probe = LoadProbe(LoadGate(limits), self.metrics)
        RoomApi(self.rooms).register(self.twirp)
        self.call_log = CallLog(self.store, clock, retention_days=settings.call_log_days)
        self.egress_records = EgressRecords(self.store, shared=bool(settings.redis))
        CallLogApi(self.call_log, clock, self.egress_records).register(self.twirp)
        self.console = ConsoleApi(
            dict(settings.keys),
            self.rooms,
            self.call_log,
            clock,
            io_timeout=settings.http_idle_timeout,
        )
        self.media = MediaService(
            settings.media_address, settings.rtp_ports, bind=settings.sip.host
        )
        restrict_host_addresses(settings.rtc_addresses)
        bind_ice_ports(settings.rtc_ports)
        use_waveform_opus()
        deliver_audio_promptly()
        self.signal = SignalServer(self.rooms, dict(settings.keys), media=self.media)
        self.agents = AgentService(self.rooms, dict(settings.keys), public_url="")
        self.agents.register(self.twirp)
        self.egress = EgressService(
            self.rooms,
            self.media,
            self.webhooks,
            settings.recordings_dir,
            records=self.egress_records,
            clock=clock,
        )
        self.egress.register(self.twirp)
        calls = CallServices(
            config=self.sip_config,
            rooms=self.rooms,
            call_log=self.call_log,
            media=self.media,
            max_calls=settings.max_calls,
            calls_in_progress=self.calls_in_progress,
            session_min_se=settings.session_min_se,
            room_limits=RoomLimits(settings.room_max_callers, float(settings.room_join_rate)),
            on_media=self._call_media,
            overloaded=self.load_probe.overloaded,
            # (docs/cluster.md s4; the cluster's router is made below, with the user agent)
            route_call=lambda *call: self.cluster.calls.route(*call),  # noqa: PLW0108
        )
        guard = AuthGuard(max_failures=settings.auth_max_failures, block=float(settings.auth_block))
        digest = DigestServer(secrets.token_bytes(32))
        auth = TrunkAuth(digest, guard, conceal_numbers=settings.conceal_numbers)
        self.inbound = InboundCalls(calls, auth)
        # The address in our Via, Contact and From: the SIP host, or the media address when SIP
        # listens on every address (--media-ip is then required).
        wildcard = settings.sip.host in ("0.0.0.0", "::")
        advertised = settings.media_address if wildcard else settings.sip.host
        self.sip_ua = SipUserAgent(advertised, settings.sip.port, on_invite=self.inbound.invite)
        self.metrics.observe(twirp=self.twirp, ua=self.sip_ua, media=self.media)
        admission = Admission(
            rate=float(settings.sip_rate),
            burst=2.0 * settings.sip_rate,
            allow_from=[ipaddress.ip_network(net) for net in settings.allow_from],
        )
        self.sip = SipService(
            self.sip_ua,
            admission=admission,
            message_timeout=settings.sip_message_timeout,
            advertised_host=advertised,
        )
        self.call_log.on_record = self._name_trace
        self.sip.tls_ca = settings.tls_ca
        self.sip_ua.attach(self.sip)
        self.outbound = OutboundCalls(calls, self.sip_ua)
        self.registrations = Registrations(self.sip_config, self.sip_ua)
        self.transfers = Transfers(
            self.rooms,
            self.call_log,
            lambda key: self.inbound.active.get(key) or self.outbound.active.get(key),
        )
        SipApi(
            self.sip_config,
            create_participant=self._create_participant,
            transfer_participant=self.transfers.transfer,
        ).register(self.twirp)
        self.ready = False
        # This node in the cluster (docs/cluster.md s2, s6): its name, heartbeat and drain.
        self.node_id = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.drain = Drain(settings.drain_timeout)
        self.cluster = ClusterRooms(
            self.node_id,
            self.rooms,
            keys=dict(settings.keys),
            twirp=self.twirp,
            ua=self.sip_ua,
            agents=self.agents,
            egress=self.egress,
        )
        self.heartbeat: Heartbeat | None = None
        self.node_calls: NodeCalls | None = None  # with Redis: this node's calls listed there
        self.collector: Collector | None = None  # the GC's settings while serving
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=2 * 1024 * 1024,
            handler_args={"max_field_size": 65536, "logger": self.http_errors.parser_logger()},
            # errors counted (none a bare 500), outside the cluster's relay to room owners
            middlewares=[self.http_errors.middleware, self.cluster.relay.middleware],
        )
        app.router.add_route("*", PREFIX + "{route:.*}", self.twirp.handle)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/", self.healthz)
        self.signal.routes(app)
        TraceApi(
            lambda: self.sip.traces, dict(self.settings.keys), time.time, self.trace_rtp
        ).routes(app)
        self.agents.routes(app)
        NodeApi(self.list_nodes, dict(self.settings.keys)).routes(app)
        self.console.routes(app)  # the web console: server/console_api.py, console_web.py
        ConsoleFiles().routes(app)
        self.cluster.routes(app)
        if self.settings.metrics is None:
            app.router.add_get("/metrics", self.metrics.handler())
        return app

    def _name_trace(self, info: proto.SIPCallInfo) -> None:
        """Let a call's SIP trace be found by its call id (SCL_...) as well as its Call-ID."""
        if self.sip.traces is not None and info.sip_call_id:
            self.sip.traces.name(info.call_id, info.sip_call_id)
        if self.node_calls is not None:
            self.node_calls.record(info)

    def _call_media(self, info: proto.SIPCallInfo, leg: CallMedia) -> None:
        """A call's media leg as it joins its room: its RTP traced at once when its trunk is in
        --trace-rtp, else when asked for (`trace_rtp`)."""
        trunks = self.settings.trace_rtp
        if trunks and ("all" in trunks or info.trunk_id in trunks):
            self.trace_rtp(info.sip_call_id, opening=True, leg=leg)

    def trace_rtp(self, call: str, *, opening: bool = False, leg: CallMedia | None = None) -> bool:
        """Trace the RTP headers of a live call (by our call id or its SIP Call-ID) in its SIP
        trace from now on; False when there is no such live call with a trace."""
        traces, now = self.sip.traces, time.time()
        if traces is None:
            return False
        known = traces.get(call, now)
        sip_call_id = known.call_id if known is not None else call
        leg = leg or self.inbound.leg_of(sip_call_id) or self.outbound.leg_of(sip_call_id)
        if leg is None or leg.closed:
            return False
        trace = traces.capture_rtp(sip_call_id, now, opening=opening)
        if trace is None:
            return False
        if leg.capture is None:
            local = (self.settings.media_address, leg.port)
            record = traces.record_rtp

            def capture(data: bytes, outgoing: bool, remote: tuple[str, int]) -> None:
                record(trace, data, time.time(), outgoing=outgoing, local=local, remote=remote)

            leg.capture_rtp(capture)
        return True

    def calls_in_progress(self) -> int:
        """Every call of both directions, PIN entry included: what `--max-calls` limits."""
        return self.inbound.count() + len(self.outbound.active)

    def not_ready(self) -> str | None:
        """Why this node should get no new work now (a load balancer moves on), or None."""
        if not self.ready:
            return "starting or stopping"
        if not self.drain.accepting:  # SIGTERM: the balancer should send no new work here
            return "draining"
        return self.load_probe.not_ready()

    async def healthz(self, _: web.Request) -> web.Response:
        reason = self.not_ready()
        if reason is not None:
            return web.Response(status=503, text=reason + "\n")
        return web.Response(text="ok\n")

    # -- this node in the cluster -----------------------------------------------------------

    async def _create_participant(
        self, req: proto.CreateSIPParticipantRequest, claims: Any
    ) -> proto.SIPParticipantInfo:
        if not self.drain.accepting:
            raise ApiError("unavailable", "this node is draining (shutting down): try another")
        return await self.outbound.create(req, claims)

    def _node_load(self, info: NodeInfo) -> NodeInfo:
        return replace(
            info,
            state=self.drain.state.value,
            calls=self.calls_in_progress(),
            rooms=len(self.rooms.registry),  # (a count, not a list of every room)
            agents=self.cluster.agents.advertised(),
        )

    async def list_nodes(self) -> list[NodeInfo]:
        if self.heartbeat is None:
            raise ApiError("unavailable", "starting or stopping")
        return await self.heartbeat.list()

    def start_draining(self, started: DrainStarted) -> None:
        """New INVITEs and OPTIONS 503 (Retry-After: until the drain ends, 5 s at least),
        `draining` in the heartbeat at once."""
        self.sip_ua.agent.refuse_new = max(5, math.ceil(self.drain.timeout))
        self.sip.refuse_new()  # no 100 from a reader thread before the 503
        if self.heartbeat is not None:
            self.heartbeat.beat_now()

    async def _start_heartbeat(self) -> None:
        http = self.settings.http
        info = NodeInfo(
            id=self.node_id,
            max_calls=self.settings.max_calls,
            sip=str(HostPort(self.sip_ua.host, self.sip_ua.port)),  # (advertised: not 0.0.0.0)
            http=str(HostPort(http.host, self.http_port)),
            version=__version__,
            started_at=time.time(),
        )
        nodes = None
        if isinstance(self.store, RedisStore):
            nodes = redis_nodes(self.store.client, self.store.prefix)
        self.heartbeat = Heartbeat(info, self._node_load, nodes)
        await self.heartbeat.start()
        log.info("node %s", self.node_id)

    async def _resync(self) -> None:
        """Redis (re)connected: caches reloaded; a Redis restarted without its data has
        forgotten this node and its rooms: beat now, and name the rooms held here as ours."""
        await self.sip_config.resync()
        if self.heartbeat is not None:
            self.heartbeat.beat_now()
        self.cluster.owners.reclaim()

    def samples(self) -> list[metrics.Sample]:
        """What `/metrics` reads at each scrape (server/api/scraped.py)."""
        return scraped_samples(self)

    async def start(self) -> None:
        await self.store.open()
        if isinstance(self.store, RedisStore):
            log.info("store: Redis at %s, keys %s*", redacted(self.store.url), self.store.prefix)
            # Other nodes write too: follow their changes (a full reload now and after every
            # reconnection, one record per change message between).
            await self.store.follow(self.sip_config.changed, self._resync)
        else:
            await self.sip_config.load()
        await self.webhooks.start()
        self.call_log.start()
        await self.egress.open(self.node_id)  # recordings of the last run; cut ones marked failed
        # An idle HTTP connection, or one whose request headers have not all come, is closed
        # after --http-idle-timeout (aiohttp's default is an hour: a slow-headers client held a
        # descriptor that long).
        self._runner = web.AppRunner(
            self.build_app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.settings.http_idle_timeout,
            shutdown_timeout=HTTP_SHUTDOWN_S,
        )
        await self._runner.setup()
        http = self.settings.http
        site = web.TCPSite(self._runner, http.host, http.port, reuse_address=True)
        await site.start()
        self.stalled_writes.start(self._http_connections)  # clients that take nothing: cut
        if self.settings.metrics is not None:  # only there, not on the API's address
            scrape = web.Application()
            scrape.router.add_get("/metrics", self.metrics.handler())
            self._metrics_runner = web.AppRunner(
                scrape,
                access_log=None,
                handle_signals=False,
                keepalive_timeout=self.settings.http_idle_timeout,
                shutdown_timeout=HTTP_SHUTDOWN_S,
            )
            await self._metrics_runner.setup()
            where = self.settings.metrics
            await web.TCPSite(self._metrics_runner, where.host, where.port).start()
        if isinstance(self.store, RedisStore):  # before the first call (docs/cluster.md)
            nodes = redis_nodes(self.store.client, self.store.prefix)
            self.node_calls = NodeCalls(self.node_id, nodes, self.store)
            await self.node_calls.start()
        await self.start_sip()
        self.registrations.start()
        await self._start_heartbeat()
        if isinstance(self.store, RedisStore):  # rooms routed to their owners
            self.cluster.start(self.store.client, self.store.prefix)
        self.load_probe.start()
        # Everything loaded at startup lives for the process: keep it out of the cyclic GC's
        # generations so collections stay short while calls come and go; and collect less
        # often (server/collector.py).
        self.collector = tune_collector()
        self.ready = True
        log.info(
            "sipbridge %s: API on http://%s, %d inbound / %d outbound trunks, %d dispatch rules",
            __version__,
            http,
            len(self.sip_config.inbound),
            len(self.sip_config.outbound),
            len(self.sip_config.rules),
        )

    async def start_sip(self) -> None:
        """SIP on UDP and TCP at `--sip`, and TLS at `--sip-tls` when configured."""
        sip = self.settings.sip
        udp = await self.sip.listen(Listen("udp", sip.host, sip.port))
        # TCP on the same port as UDP, as SIP expects (a port 0 UDP bind picks one for both).
        await self.sip.listen(Listen("tcp", sip.host, udp.port))
        self.sip_ua.port = udp.port
        if self.settings.sip_tls is not None:
            context = tls_context(self.settings.tls_cert, self.settings.tls_key)
            tls = self.settings.sip_tls
            await self.sip.listen(Listen("tls", tls.host, tls.port), context)
        log.info("SIP on %s", ", ".join(f"{b.transport}:{b.host}:{b.port}" for b in self.sip.bound))

    def _http_connections(self) -> list[Any]:
        server = self._runner.server if self._runner is not None else None
        return server.connections if server is not None else []

    @property
    def http_port(self) -> int:
        """The bound HTTP port (useful with `--http 127.0.0.1:0`)."""
        assert self._runner is not None
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("not listening")

    async def stop(self) -> None:
        self.ready = False
        if self.collector is not None:  # its callback out of gc.callbacks
            self.collector.remove()
            self.collector = None
        self.load_probe.stop()
        await bounded_step("the cluster's links", self.cluster.stop())
        if self.heartbeat is not None:  # out of the node list at once
            await bounded_step("leaving the node list", self.heartbeat.stop())
        if self.inbound.shutdown() + self.outbound.shutdown() + self.registrations.close():
            await asyncio.sleep(0.2)  # let the BYEs and 503s leave before the sockets close
        await bounded_step("closing SIP", self.sip.close())
        await self.egress.close()  # every recording's file closed, playable
        self.media.close()
        await bounded_step("closing the signalling connections", self.signal.close_all())
        await bounded_step("the agents' connections", self.agents.close())
        await bounded_step("the stalled-writes watch", self.stalled_writes.stop())
        for runner in (self._runner, self._metrics_runner):
            if runner is not None:
                await bounded_step("the HTTP server", runner.cleanup())
        self._runner = self._metrics_runner = None
        self.rooms.close()
        await self.sip_config.drain()
        await self.call_log.stop()
        if self.node_calls is not None:  # the ends of the last calls, then the set is empty
            await self.node_calls.stop()
        await self.webhooks.stop()
        await self.store.close()
        log.info("sipbridge stopped")
