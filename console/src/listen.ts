// Listen in and talk: the page joins a room with livekit-client - hidden and subscribe-only to
// listen, or as a participant publishing the microphone to talk - with a level meter (WebAudio)
// on what it hears, the DTMF digits it sees and a keypad that sends them (publishDtmf).
// livekit-client is loaded when the page first joins a room: the rest of the console starts
// without its 500 kB.
import type { RemoteTrack, Room } from 'livekit-client';
import { postJson } from './api';
import { h, replace } from './ui';

const DTMF_CODES: Record<string, number> = { '*': 10, '#': 11 };

export class Listener {
  readonly panel = h('section', { class: 'listen', 'aria-labelledby': 'listen-title', hidden: true });
  speakers = new Set<string>();
  onSpeakers: () => void = () => {};
  private room: Room | null = null;
  private audio: AudioContext | null = null;
  private analyser: AnalyserNode | null = null;
  private timer = 0;
  private meter = h('meter', { id: 'level', min: -80, max: 0, low: -50, high: -10, value: -80, 'aria-label': 'Level heard' });
  private levelText = h('span', { id: 'level-text' }, '—');
  private digits = h('output', { id: 'dtmf-received', 'aria-live': 'polite' });
  private state = h('p', { id: 'listen-state', 'aria-live': 'polite' });

  async join(roomName: string, talk: boolean): Promise<void> {
    await this.leave();
    this.audio = new AudioContext();
    this.analyser = this.audio.createAnalyser();
    this.analyser.fftSize = 2048;
    this.analyser.smoothingTimeConstant = 0;
    const keypad = h('div', { class: 'keypad', role: 'group', 'aria-label': 'Send DTMF' });
    for (const digit of '123456789*0#') {
      keypad.append(
        h('button', { type: 'button', disabled: !talk, 'data-digit': digit, onclick: () => this.dtmf(digit) }, digit),
      );
    }
    replace(
      this.panel,
      h('h2', { id: 'listen-title' }, talk ? `Talking in ${roomName}` : `Listening to ${roomName}`),
      this.state,
      h('p', {}, h('label', { for: 'level' }, 'Heard: '), this.meter, ' ', this.levelText),
      h('p', {}, 'DTMF seen: ', this.digits),
      keypad,
      h('button', { type: 'button', id: 'leave', onclick: () => this.leave() }, 'Leave'),
    );
    this.panel.hidden = false;
    this.panel.dataset.room = roomName;
    this.panel.dataset.mode = talk ? 'talk' : 'listen';
    this.state.textContent = 'Joining…';
    const { token } = await postJson<{ token: string }>('/console/join', { room: roomName, talk });
    const { Room, RoomEvent } = await import('livekit-client');
    const room = new Room({ adaptiveStream: false, dynacast: false });
    this.room = room;
    room
      .on(RoomEvent.TrackSubscribed, (track: RemoteTrack) => this.hear(track))
      .on(RoomEvent.SipDTMFReceived, (dtmf) => {
        this.digits.append(h('span', { class: 'digit' }, dtmf.digit || String(dtmf.code)));
      })
      .on(RoomEvent.ActiveSpeakersChanged, (speakers) => {
        this.speakers = new Set(speakers.map((p) => p.identity));
        this.onSpeakers();
      })
      .on(RoomEvent.Disconnected, (reason) => {
        this.state.textContent = `Left the room (${reason ?? 'disconnected'}).`;
        this.panel.dataset.state = 'left';
      });
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    await room.connect(`${scheme}://${location.host}`, token, { autoSubscribe: true });
    if (talk) await room.localParticipant.setMicrophoneEnabled(true);
    this.state.textContent = talk ? 'Connected: the room hears your microphone.' : 'Connected, hidden: nobody in the room sees you.';
    this.panel.dataset.state = 'connected';
    this.timer = window.setInterval(() => this.measure(), 100);
  }

  private hear(track: RemoteTrack): void {
    if (track.kind !== 'audio' || !this.audio || !this.analyser) return;
    // Chromium gives WebAudio a remote WebRTC stream only while an element plays it.
    const element = track.attach();
    element.dataset.sid = track.sid ?? '';
    this.panel.append(element);
    this.audio.createMediaStreamSource(new MediaStream([track.mediaStreamTrack])).connect(this.analyser);
    void this.audio.resume();
  }

  private measure(): void {
    if (!this.analyser) return;
    const samples = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    const dbfs = rms > 0 ? 20 * Math.log10(rms) : -120;
    this.meter.value = Math.max(-80, dbfs);
    this.meter.dataset.dbfs = dbfs.toFixed(1);
    this.levelText.textContent = `${dbfs.toFixed(1)} dBFS`;
  }

  async dtmf(digit: string): Promise<void> {
    const code = DTMF_CODES[digit] ?? Number(digit);
    await this.room?.localParticipant.publishDtmf(code, digit);
  }

  async leave(): Promise<void> {
    window.clearInterval(this.timer);
    const room = this.room;
    this.room = null;
    await room?.disconnect();
    await this.audio?.close().catch(() => {});
    this.audio = null;
    this.analyser = null;
    this.speakers = new Set();
    this.panel.hidden = true;
    this.panel.replaceChildren();
  }
}
