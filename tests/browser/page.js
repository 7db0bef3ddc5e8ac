// The browser side of tests/interop/test_browser.py: what a user's page does with livekit-client.
// Bundled by driver.mjs with esbuild, once per livekit-client version it tests (the import below
// is aliased to that version's package). Parameters come from the page's query string:
//   url, token             where to join
//   singlePeerConnection   "0" for the two-peer-connection protocol (/rtc), else one (/rtc/v1)
//   deferOffer             "1" hides CompressionStream, which livekit-client needs to put its
//                          first offer in the join: the offer then follows the join, as on Firefox
//   toneHz                 the frequency this page publishes (a WebAudio oscillator)
//   peerConnectionTimeout  ms livekit-client waits for its peer connection (its default 15000)
// Everything it observes goes to window.sbReport(json) (driver.mjs prints it for pytest); the
// seed page's JS example runs as written and logs to the console, which the driver prints too.
import { LocalAudioTrack, ParticipantKind, Room, RoomEvent, Track, version } from 'livekit-client';

const params = new URLSearchParams(location.search);
const report = (event, data = {}) => window.sbReport(JSON.stringify({ event, ...data }));

if (params.get('deferOffer') === '1') {
  // livekit-client sends its offer with the join only when CompressionStream exists
  // (isPublisherOfferWithJoinSupported); without it the first offer comes after the join.
  window.CompressionStream = undefined;
}

const audio = new AudioContext({ sampleRate: 48000 });
const room = new Room({ singlePeerConnection: params.get('singlePeerConnection') !== '0' });

function seedExample(participant) {
  // The seed page's "Basic example", verbatim.
  if (participant.kind == ParticipantKind.SIP) {
    console.log(participant.attributes['sip.twilio.callSid']);
  }
}

// What the page hears: an analyser on each subscribed audio track, read every 100 ms. The level
// is the RMS of the last 8192 samples in dBFS; the peak is the loudest FFT bin's frequency.
function listen(track, participant) {
  const source = audio.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
  const analyser = audio.createAnalyser();
  analyser.fftSize = 8192;
  analyser.smoothingTimeConstant = 0;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const bins = new Float32Array(analyser.frequencyBinCount);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    analyser.getFloatFrequencyData(bins);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    let peak = 0;
    for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
    report('level', {
      identity: participant.identity,
      dbfs: rms > 0 ? 20 * Math.log10(rms) : -200,
      peakHz: (peak * audio.sampleRate) / analyser.fftSize,
    });
  }, 100);
  track.once('ended', () => clearInterval(timer));
  // Chromium delivers remote WebRTC audio to WebAudio only while an element plays the stream.
  const element = track.attach();
  element.muted = true;
  document.body.append(element);
}

// What the page says: a sine of toneHz at -12 dBFS, published as a microphone track.
async function publishTone() {
  const oscillator = new OscillatorNode(audio, { frequency: Number(params.get('toneHz') || 700) });
  const gain = new GainNode(audio, { gain: 10 ** (-12 / 20) * Math.SQRT2 });
  const destination = audio.createMediaStreamDestination();
  oscillator.connect(gain).connect(destination);
  oscillator.start();
  const track = new LocalAudioTrack(destination.stream.getAudioTracks()[0], undefined, false);
  const publication = await room.localParticipant.publishTrack(track, {
    source: Track.Source.Microphone,
    dtx: false,
    red: false,
  });
  report('published', { sid: publication.trackSid });
}

room
  .on(RoomEvent.ParticipantConnected, (participant) => {
    seedExample(participant);
    report('joined', {
      identity: participant.identity,
      kind: participant.kind,
      attributes: participant.attributes,
    });
  })
  .on(RoomEvent.TrackSubscribed, (track, publication, participant) => {
    report('subscribed', { identity: participant.identity, kind: track.kind });
    if (track.kind === Track.Kind.Audio) listen(track, participant);
  })
  .on(RoomEvent.ParticipantDisconnected, (participant) => {
    report('left', { identity: participant.identity, kind: participant.kind });
  })
  .on(RoomEvent.ActiveSpeakersChanged, (speakers) => {
    report('speakers', { identities: speakers.map((speaker) => speaker.identity) });
  })
  .on(RoomEvent.Disconnected, (reason) => report('disconnected', { reason }));

// Called by the driver: send DTMF the way a keypad in a page does.
window.sbDtmf = async (digits) => {
  for (const digit of digits) {
    // RFC 4733 event codes: 0-9 for the digits, 10 for *, 11 for #
    await room.localParticipant.publishDtmf('0123456789*#'.indexOf(digit), digit);
  }
  report('dtmf-sent', { digits });
};
window.sbLeave = async () => {
  await room.disconnect();
};

(async () => {
  try {
    report('version', { version });
    await audio.resume();
    await room.connect(params.get('url'), params.get('token'), {
      peerConnectionTimeout: Number(params.get('peerConnectionTimeout') || 15000),
    });
    report('connected', {
      identity: room.localParticipant.identity,
      singlePeerConnection: room.options.singlePeerConnection,
    });
    for (const participant of room.remoteParticipants.values()) {
      seedExample(participant);
      report('joined', {
        identity: participant.identity,
        kind: participant.kind,
        attributes: participant.attributes,
      });
    }
    await publishTone();
  } catch (error) {
    report('error', { message: String(error?.message ?? error) });
  }
})();
