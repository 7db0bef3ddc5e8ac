"""A LiveKit room participant made with the official realtime SDK (`livekit.rtc`), for tests.

Run it inside a network namespace (tests/netns.py; libwebrtc ignores loopback):

    ip netns exec NS .venv/bin/python tests/sdk_client.py --url ws://HOST_IP:PORT --token TOKEN \
        [--publish IN.wav] [--record OUT.wav] [--seconds S] [--dtmf DIGITS] \
        [--subscribe-identity ID] [--connect-timeout S] [--dtmf-delay S] \
        [--publish-delay S] [--publish-after-record] [--publish-when-subscribed] \
        [--dtmf-after-publish] \
        [--no-auto-subscribe] \
        [--subscribe-after S] [--unsubscribe-after S] [--rpc-serve METHOD] \
        [--rpc-call ID:METHOD:PAYLOAD] [--text-topic TOPIC] [--send-text TOPIC:TEXT|@FILE] \
        [--data-delay S] [--allow-only IDENTITY] [--two-pc] [--stats-every S] [--verbose]

It prints one JSON object per line on stdout for everything it sees, each with "event" and "t"
(seconds since the script started):

    connected                {room, identity, sid, sdk_version, participants: [participant...]}
    participant_connected    {identity, sid, name, kind, attributes, metadata}
    participant_disconnected {identity, sid, reason}
    participant_attributes_changed {identity, changed, attributes}
    track_published          {identity, track_sid, kind, mime}       (a remote publication)
    track_subscribed         {identity, track_sid, kind, mime, name}
    track_unsubscribed       {identity, track_sid}
    track_subscription_failed {identity, track_sid, error}
    local_track_published    {track_sid}
    local_track_subscribed   {track_sid}   (the server's TrackSubscribed: someone hears it)
    set_subscribed           {track_sid, subscribed}
    rpc_served               {caller, method, payload}    (--rpc-serve)
    rpc_result               {response} | rpc_error {code, message}   (--rpc-call)
    text_received            {identity, topic, text}      (--text-topic)
    text_sent                {topic, chars}               (--send-text)
    publish_done             {frames, seconds}
    recording                {identity, track_sid, path}
    first_audio_frame        {identity, track_sid, sample_rate, channels, samples}
    recording_done           {path, frames, seconds}
    audio_stats              {packets, jitter, target_delay, buffer_delay, emitted, removed,
                              inserted, concealed, samples}   (--stats-every)
    data_received            {identity, topic, kind, data (utf-8 or null), data_b64}
    sip_dtmf_received        {identity, code, digit}
    active_speakers_changed  {speakers: [identity...]}  (the SDK's list, loudest first)
    connection_quality_changed {identity, quality (QUALITY_EXCELLENT ...)}
    dtmf_sent                {code, digit}
    connection_state_changed / reconnecting / reconnected
    disconnected             {reason}
    error                    {where, error}       (then exit code 1)
    exit                     {code}

--publish: a WAV file (16-bit/float, any rate: mixed to mono, resampled to 48 kHz) published as a
mono 48 kHz microphone track (after --publish-delay) in 10 ms frames paced by
AudioSource.capture_frame; the audio starts at once, heard or not, so a subscriber that joins or
subscribes later misses the start (delay the publisher or pad the signal). With
--publish-after-record the delay counts from the moment recording starts (a phone's track
subscribed, which is when its call is answered), so a slow answer cannot eat the signal.
With --publish-when-subscribed the audio starts once the track is subscribed
(`LocalTrackPublication.wait_for_subscription()`, as livekit-agents' audio output waits): audio
captured before that may never leave the SDK, whose sender starts only once the renegotiation
that `publish_track` schedules (debounced 150 ms) is answered.
--record: the first remote audio track subscribed (from --subscribe-identity when given) read
through an AudioStream at 48 kHz mono into a 16-bit WAV, written as it arrives until the track is
unsubscribed or the run ends (a killed run leaves a file with an unfinished header, which
tests/audio.read_wav reads).
--stats-every: every S seconds while recording, the recorded track's inbound-rtp statistics
(its jitter buffer, libwebrtc's NetEq): packets received, the jitter, the sums over the samples
played (`emitted`) of their target and actual delay in seconds (`target_delay`, `buffer_delay`:
a difference of two over the difference of `emitted` is the mean over that interval), and the
samples removed (accelerate), inserted (preemptive expand) and concealed (a packet lost or late).
--dtmf: digits (0-9 * # A-D) sent one by one with publish_dtmf after --dtmf-delay seconds
(counted from the end of --publish with --dtmf-after-publish: keys never cut into the signal).
After --seconds (counted from `connected`) it disconnects and leaves with os._exit (WIRE.md s6:
avoids the Rust core's panic at interpreter exit). Every wait is bounded; a watchdog ends the
process with exit code 2 if the SDK hangs anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RATE = 48000
FRAME = RATE // 100  # 10 ms
START = time.monotonic()
DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14}
DTMF_CODES["D"] = 15


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "t": round(time.monotonic() - START, 4), **fields})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def load_wav(path: str) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Mono 48 kHz int16 samples of a WAV (via tests/audio.py: float WAVs, unfinished headers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.audio import read_wav, resample  # noqa: PLC0415

    samples, rate = read_wav(path)
    if rate != RATE:
        samples = resample(samples, rate, RATE)
    pcm: np.ndarray[Any, np.dtype[np.int16]] = np.round(
        np.clip(samples, -1.0, 1.0) * 32767.0
    ).astype(np.int16)
    return pcm


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        from livekit import rtc  # noqa: PLC0415

        self.rtc = rtc
        self.args = args
        self.room = rtc.Room()
        self.failed = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.recording: asyncio.Task[None] | None = None
        self.recording_sid = ""
        self.record_stop = asyncio.Event()
        self.record_started = asyncio.Event()
        self.publish_finished = asyncio.Event()
        self.gone = asyncio.Event()  # disconnected, by us or by the server
        self._hook_events()

    def error(self, where: str, exc: BaseException | str) -> None:
        self.failed = True
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        emit("error", where=where, error=text)

    def spawn(self, coro: Any, where: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error(where, exc)

        task = asyncio.get_running_loop().create_task(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- events -----------------------------------------------------------------------------------

    def participant(self, p: Any) -> dict[str, Any]:
        return {
            "identity": p.identity,
            "sid": p.sid,
            "name": p.name,
            "kind": enum_name(self.rtc.ParticipantKind, p.kind),
            "attributes": dict(p.attributes),
            "metadata": p.metadata,
        }

    def publication(self, pub: Any) -> dict[str, Any]:
        return {
            "track_sid": pub.sid,
            "kind": enum_name(self.rtc.TrackKind, pub.kind),
            "mime": pub.mime_type,
            "name": pub.name,
        }

    def _hook_events(self) -> None:
        room, rtc = self.room, self.rtc

        Handler = Callable[..., None]

        def on(event: str) -> Callable[[Handler], Handler]:
            def register(fn: Handler) -> Handler:
                def safe(*a: Any) -> None:
                    try:
                        fn(*a)
                    except Exception as exc:
                        self.error(f"on {event}", exc)

                room.on(event, safe)  # type: ignore[arg-type]
                return fn

            return register

        @on("participant_connected")
        def _(p: Any) -> None:
            emit("participant_connected", **self.participant(p))

        @on("participant_disconnected")
        def _(p: Any) -> None:
            reason = enum_name(rtc.DisconnectReason, p.disconnect_reason or 0)
            emit("participant_disconnected", identity=p.identity, sid=p.sid, reason=reason)

        @on("participant_attributes_changed")
        def _(changed: dict[str, str], p: Any) -> None:
            emit(
                "participant_attributes_changed",
                identity=p.identity,
                changed=dict(changed),
                attributes=dict(p.attributes),
            )

        @on("track_published")
        def _(pub: Any, p: Any) -> None:
            emit("track_published", identity=p.identity, **self.publication(pub))

        @on("track_subscribed")
        def _(track: Any, pub: Any, p: Any) -> None:
            emit("track_subscribed", identity=p.identity, **self.publication(pub))
            self.maybe_record(track, pub, p)

        @on("track_unsubscribed")
        def _(track: Any, pub: Any, p: Any) -> None:
            emit("track_unsubscribed", identity=p.identity, track_sid=pub.sid)
            if pub.sid == self.recording_sid:
                self.record_stop.set()  # what the stream gives after this is not the track

        @on("track_subscription_failed")
        def _(p: Any, track_sid: str, error: str) -> None:
            emit("track_subscription_failed", identity=p.identity, track_sid=track_sid, error=error)

        @on("local_track_published")
        def _(pub: Any, track: Any) -> None:
            emit("local_track_published", track_sid=pub.sid)

        @on("local_track_subscribed")
        def _(track: Any) -> None:
            emit("local_track_subscribed", track_sid=track.sid)

        @on("data_received")
        def _(packet: Any) -> None:
            try:
                text: str | None = packet.data.decode()
            except UnicodeDecodeError:
                text = None
            emit(
                "data_received",
                identity=packet.participant.identity if packet.participant else None,
                topic=packet.topic,
                kind=enum_name(rtc.DataPacketKind, packet.kind),
                data=text,
                data_b64=base64.b64encode(packet.data).decode(),
            )

        @on("sip_dtmf_received")
        def _(dtmf: Any) -> None:
            emit(
                "sip_dtmf_received",
                identity=dtmf.participant.identity if dtmf.participant else None,
                code=dtmf.code,
                digit=dtmf.digit,
            )

        @on("active_speakers_changed")
        def _(speakers: list[Any]) -> None:
            emit("active_speakers_changed", speakers=[p.identity for p in speakers])

        @on("connection_quality_changed")
        def _(p: Any, quality: int) -> None:
            emit(
                "connection_quality_changed",
                identity=p.identity,
                quality=rtc.ConnectionQuality(quality).name,  # a Python enum, QUALITY_*
            )

        @on("connection_state_changed")
        def _(state: int) -> None:
            emit("connection_state_changed", state=enum_name(rtc.ConnectionState, state))

        @on("reconnecting")
        def _() -> None:
            emit("reconnecting")

        @on("reconnected")
        def _() -> None:
            emit("reconnected")

        @on("disconnected")
        def _(reason: int) -> None:
            self.disconnected(reason)

    def disconnected(self, reason: int) -> None:
        if not self.gone.is_set():
            self.gone.set()
            emit("disconnected", reason=enum_name(self.rtc.DisconnectReason, reason))

    # -- media ------------------------------------------------------------------------------------

    def maybe_record(self, track: Any, pub: Any, p: Any) -> None:
        if not self.args.record or self.recording is not None:
            return
        if pub.kind != self.rtc.TrackKind.KIND_AUDIO:
            return
        wanted = self.args.subscribe_identity
        if wanted and p.identity != wanted:
            return
        emit("recording", identity=p.identity, track_sid=pub.sid, path=self.args.record)
        self.recording_sid = pub.sid
        self.record_started.set()
        self.recording = asyncio.get_running_loop().create_task(self.record(track, pub, p))
        if self.args.stats_every:
            self.spawn(self.poll_stats(track), "stats")

    async def poll_stats(self, track: Any) -> None:
        """Every --stats-every s: the receiver's jitter-buffer statistics (inbound-rtp)."""
        while not self.record_stop.is_set():
            for stat in await asyncio.wait_for(track.get_stats(), 2):
                if stat.WhichOneof("stats") != "inbound_rtp":
                    continue
                inbound = stat.inbound_rtp.inbound
                emit(
                    "audio_stats",
                    packets=stat.inbound_rtp.received.packets_received,
                    jitter=stat.inbound_rtp.received.jitter,
                    target_delay=inbound.jitter_buffer_target_delay,
                    buffer_delay=inbound.jitter_buffer_delay,
                    emitted=inbound.jitter_buffer_emitted_count,
                    removed=inbound.removed_samples_for_acceleration,
                    inserted=inbound.inserted_samples_for_deceleration,
                    concealed=inbound.concealed_samples,
                    samples=inbound.total_samples_received,
                )
            await asyncio.sleep(self.args.stats_every)

    async def record(self, track: Any, pub: Any, p: Any) -> None:
        stream = self.rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        frames = 0
        out = wave.open(self.args.record, "wb")  # noqa: SIM115 - closed in finally
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        try:
            iterator = aiter(stream)
            stop = asyncio.ensure_future(self.record_stop.wait())
            try:
                while True:
                    nxt = asyncio.ensure_future(anext(iterator))
                    done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        break
                    try:
                        ev = nxt.result()
                    except StopAsyncIteration:
                        break
                    frame = ev.frame
                    if frames == 0:
                        emit(
                            "first_audio_frame",
                            identity=p.identity,
                            track_sid=pub.sid,
                            sample_rate=frame.sample_rate,
                            channels=frame.num_channels,
                            samples=frame.samples_per_channel,
                        )
                    out.writeframesraw(bytes(frame.data))
                    out._file.flush()  # type: ignore[attr-defined]
                    frames += frame.samples_per_channel
            finally:
                stop.cancel()
        except Exception as exc:
            self.error("record", exc)
        finally:
            out.close()
            try:
                await asyncio.wait_for(stream.aclose(), 3)
            except Exception as exc:
                self.error("record close", exc)
            emit("recording_done", path=self.args.record, frames=frames, seconds=frames / RATE)

    async def publish(self, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> None:
        rtc = self.rtc
        if self.args.publish_after_record:
            await self.record_started.wait()
        await asyncio.sleep(self.args.publish_delay)
        source = rtc.AudioSource(RATE, 1, queue_size_ms=100)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await asyncio.wait_for(
            self.room.local_participant.publish_track(track, options), 10
        )
        if self.args.publish_when_subscribed:
            await asyncio.wait_for(publication.wait_for_subscription(), 10)
        frames = 0
        try:
            for start in range(0, len(pcm), FRAME):
                chunk = pcm[start : start + FRAME]
                if len(chunk) < FRAME:
                    chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
                frame = rtc.AudioFrame(chunk.tobytes(), RATE, 1, FRAME)
                await asyncio.wait_for(source.capture_frame(frame), 2)
                frames += 1
            await asyncio.wait_for(source.wait_for_playout(), 2)
        finally:
            emit("publish_done", frames=frames, seconds=frames * FRAME / RATE)
            self.publish_finished.set()

    async def subscribe_later(self) -> None:
        """After --subscribe-after s: subscribe to every remote audio track (set_subscribed),
        and after --unsubscribe-after s more, unsubscribe again."""
        await asyncio.sleep(self.args.subscribe_after)
        for subscribed, delay in ((True, 0.0), (False, self.args.unsubscribe_after)):
            if delay is None:
                return
            await asyncio.sleep(delay)
            for p in self.room.remote_participants.values():
                for pub in p.track_publications.values():
                    if pub.kind == self.rtc.TrackKind.KIND_AUDIO:
                        pub.set_subscribed(subscribed)
                        emit("set_subscribed", track_sid=pub.sid, subscribed=subscribed)

    def serve_rpc(self, method: str) -> None:
        """Answer `method` with "echo:" + the payload."""

        async def handler(data: Any) -> str:
            emit("rpc_served", caller=data.caller_identity, method=method, payload=data.payload)
            return "echo:" + data.payload

        self.room.local_participant.register_rpc_method(method, handler)

    def receive_text(self, topic: str) -> None:
        def on_stream(reader: Any, identity: str) -> None:
            async def read() -> None:
                text = await asyncio.wait_for(reader.read_all(), 10)
                emit("text_received", identity=identity, topic=topic, text=text)

            self.spawn(read(), "text stream")

        self.room.register_text_stream_handler(topic, on_stream)

    async def call_and_send(self) -> None:
        """After --data-delay: the --rpc-call, then the --send-text."""
        await asyncio.sleep(self.args.data_delay)
        local = self.room.local_participant
        if self.args.rpc_call:
            identity, method, payload = self.args.rpc_call.split(":", 2)
            try:
                response = await local.perform_rpc(
                    destination_identity=identity, method=method, payload=payload
                )
                emit("rpc_result", response=response)
            except self.rtc.RpcError as err:
                emit("rpc_error", code=err.code, message=err.message)
        if self.args.send_text:
            topic, text = self.args.send_text.split(":", 1)
            if text.startswith("@"):
                text = await asyncio.to_thread(Path(text[1:]).read_text)
            await asyncio.wait_for(local.send_text(text, topic=topic), 10)
            emit("text_sent", topic=topic, chars=len(text))

    async def send_dtmf(self, digits: str) -> None:
        if self.args.dtmf_after_publish:
            await self.publish_finished.wait()
        await asyncio.sleep(self.args.dtmf_delay)
        for digit in digits:
            code = DTMF_CODES[digit.upper()]
            await asyncio.wait_for(
                self.room.local_participant.publish_dtmf(code=code, digit=digit.upper()), 5
            )
            emit("dtmf_sent", code=code, digit=digit.upper())
            await asyncio.sleep(0.1)

    # -- run --------------------------------------------------------------------------------------

    async def run(self) -> int:
        args, rtc = self.args, self.rtc
        pcm = load_wav(args.publish) if args.publish else None
        if args.text_topic:
            self.receive_text(args.text_topic)
        options = rtc.RoomOptions(
            auto_subscribe=not args.no_auto_subscribe,
            connect_timeout=args.connect_timeout,
            # False: LiveKit's two-PC protocol on `/rtc` (query parameters, the server offers
            # the subscriber connection); None: the SDK's default, single-PC on `/rtc/v1`
            single_peer_connection=False if args.two_pc else None,
        )
        try:
            await asyncio.wait_for(
                self.room.connect(args.url, args.token, options), args.connect_timeout + 5
            )
        except Exception as exc:
            self.error("connect", exc)
            return 1
        try:
            sid = await asyncio.wait_for(self.room.sid, 5)
        except Exception:
            sid = ""
        local = self.room.local_participant
        emit(
            "connected",
            room=self.room.name,
            sid=sid,
            identity=local.identity,
            participant_sid=local.sid,
            sdk_version=rtc.__version__,
            participants=[self.participant(p) for p in self.room.remote_participants.values()],
        )
        # tracks already there when we joined are subscribed without a participant_connected
        for p in self.room.remote_participants.values():
            for pub in p.track_publications.values():
                emit("track_published", identity=p.identity, **self.publication(pub))
                if pub.track is not None and pub.subscribed:
                    self.maybe_record(pub.track, pub, p)
        if args.rpc_serve:
            self.serve_rpc(args.rpc_serve)
        if args.allow_only:
            local.set_track_subscription_permissions(
                allow_all_participants=False,
                participant_permissions=[
                    rtc.ParticipantTrackPermission(
                        participant_identity=args.allow_only, allow_all=True
                    )
                ],
            )
        if pcm is not None:
            self.spawn(self.publish(pcm), "publish")
        if args.subscribe_after is not None:
            self.spawn(self.subscribe_later(), "subscribe")
        if args.rpc_call or args.send_text:
            self.spawn(self.call_and_send(), "rpc and text")
        if args.dtmf:
            self.spawn(self.send_dtmf(args.dtmf), "dtmf")
        # the time in the room, cut short when the server disconnects us
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), args.seconds)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=3)
        self.record_stop.set()
        if self.recording is not None:
            await asyncio.wait({self.recording}, timeout=5)
        if not self.gone.is_set():
            try:
                await asyncio.wait_for(self.room.disconnect(), 5)
            except Exception as exc:
                self.error("disconnect", exc)
            # the SDK's own "disconnected" event may be lost once its event task has ended
            self.disconnected(rtc.DisconnectReason.CLIENT_INITIATED)
        return 1 if self.failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="ws://HOST:PORT of the server")
    p.add_argument("--token", required=True, help="access token (JWT)")
    p.add_argument("--publish", metavar="WAV", help="publish this audio as a microphone track")
    p.add_argument("--publish-delay", type=float, default=0.0, help="seconds before publishing (0)")
    p.add_argument(
        "--publish-after-record",
        action="store_true",
        help="count --publish-delay from when recording starts",
    )
    p.add_argument(
        "--publish-when-subscribed",
        action="store_true",
        help="start the audio once the published track is subscribed",
    )
    p.add_argument("--record", metavar="OUT.wav", help="record the first remote audio track")
    p.add_argument("--seconds", type=float, default=5.0, help="time in the room (5)")
    p.add_argument("--dtmf", default="", help="DTMF digits to send (0-9*#A-D)")
    p.add_argument("--dtmf-delay", type=float, default=0.5, help="seconds before DTMF (0.5)")
    p.add_argument(
        "--dtmf-after-publish",
        action="store_true",
        help="count --dtmf-delay from the end of --publish",
    )
    p.add_argument("--rpc-serve", metavar="METHOD", help='answer METHOD with "echo:"+payload')
    p.add_argument("--rpc-call", metavar="ID:METHOD:PAYLOAD", help="call a remote RPC method")
    p.add_argument("--text-topic", metavar="TOPIC", help="receive text streams on TOPIC")
    p.add_argument("--send-text", metavar="TOPIC:TEXT", help="send a text stream (@FILE: a file)")
    p.add_argument("--data-delay", type=float, default=1.0, help="before --rpc-call (1)")
    p.add_argument(
        "--allow-only", metavar="IDENTITY", help="only this participant may subscribe to us"
    )
    p.add_argument("--no-auto-subscribe", action="store_true", help="subscribe to nothing")
    p.add_argument("--two-pc", action="store_true", help="two peer connections, on /rtc")
    p.add_argument(
        "--subscribe-after", type=float, help="S: then subscribe to every remote audio track"
    )
    p.add_argument("--unsubscribe-after", type=float, help="S after subscribing: unsubscribe again")
    p.add_argument("--subscribe-identity", default="", help="record only this participant")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="(10)")
    p.add_argument("--stats-every", type=float, default=0.0, help="S: audio_stats events")
    p.add_argument("--verbose", action="store_true", help="SDK debug logs on stderr")
    args = p.parse_args(argv)
    bad = [d for d in args.dtmf.upper() if d not in DTMF_CODES]
    if bad:
        p.error(f"--dtmf: not DTMF digits: {''.join(bad)}")
    return args


def main() -> None:
    args = parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    limit = args.connect_timeout + args.seconds + 30

    def watchdog() -> None:
        emit("error", where="watchdog", error=f"still running after {limit:.0f} s")
        os._exit(2)

    timer = threading.Timer(limit, watchdog)
    timer.daemon = True
    timer.start()

    async def run() -> int:
        return await Client(args).run()

    # No asyncio.run: its shutdown (cancelling the SDK's tasks, joining executor threads) is
    # exactly what may hang or panic; os._exit below ends everything at once.
    loop = asyncio.new_event_loop()
    code = 1
    try:
        code = loop.run_until_complete(run())
    except BaseException as exc:
        emit("error", where="main", error=f"{type(exc).__name__}: {exc}")
        code = 1
    emit("exit", code=code)
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
