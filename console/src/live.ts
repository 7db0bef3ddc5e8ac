// Live: the rooms and their participants as they change, from the server's stream of JSON lines
// (GET /console/live: a snapshot, then each room event, then every 2 s the running calls'
// quality). Each participant's `sip.callStatus` history is kept while the page is open, so a
// call shows ringing -> active -> hangup; calls that ended stay listed for ENDED_KEEP_MS.
import { ApiError, current, request, signOut } from './api';
import { Listener } from './listen';
import { h, replace, setBanner } from './ui';

const ENDED_KEEP_MS = 120_000;

interface Participant {
  sid: string;
  identity: string;
  name?: string;
  kind?: string;
  state?: string;
  attributes?: Record<string, string>;
  permission?: { hidden?: boolean };
}
interface RoomInfo {
  name: string;
  sid: string;
  num_participants?: number;
}
interface Quality {
  mos?: number | null;
  codec?: string;
  received?: { loss?: number | null; jitter_ms?: number | null; packets?: number };
  sent?: { loss?: number | null; packets?: number };
}
interface Seen {
  room: string;
  participant: Participant;
  statuses: string[];
  endedAt?: number;
}

export function livePage(main: HTMLElement): () => void {
  const rooms = new Map<string, { room: RoomInfo; participants: Map<string, Participant> }>();
  const seen = new Map<string, Seen>(); // by participant sid
  let quality: Record<string, Quality> = {};
  let stopped = false;
  let abort = new AbortController();
  let scheduled = false;
  const listener = new Listener();
  const list = h('div', { id: 'rooms', 'aria-live': 'off' });
  const ended = h('div', { id: 'ended' });
  const status = h('p', { id: 'live-status', class: 'muted' }, 'Connecting…');
  main.append(h('h1', {}, 'Live'), status, listener.panel, list, h('h2', {}, 'Recently ended'), ended);
  listener.onSpeakers = () => render();

  function remember(roomName: string, p: Participant, left = false): void {
    let entry = seen.get(p.sid);
    if (!entry) seen.set(p.sid, (entry = { room: roomName, participant: p, statuses: [] }));
    entry.participant = p;
    const callStatus = p.attributes?.['sip.callStatus'];
    if (callStatus && entry.statuses[entry.statuses.length - 1] !== callStatus) entry.statuses.push(callStatus);
    if (left) entry.endedAt = Date.now();
  }

  function handle(line: any): void {
    if (line.type === 'snapshot') {
      rooms.clear();
      for (const { room, participants } of line.rooms) {
        const map = new Map<string, Participant>();
        for (const p of participants) {
          map.set(p.identity, p);
          remember(room.name, p);
        }
        rooms.set(room.name, { room, participants: map });
      }
      quality = line.quality ?? {};
    } else if (line.type === 'quality') {
      quality = line.quality ?? {};
    } else if (line.type === 'event') {
      const name: string = line.room.name;
      if (line.event === 'room_finished') rooms.delete(name);
      else if (!rooms.has(name)) rooms.set(name, { room: line.room, participants: new Map() });
      const entry = rooms.get(name);
      if (entry) entry.room = line.room;
      const p: Participant | undefined = line.participant;
      if (p && entry) {
        if (line.event === 'participant_left') entry.participants.delete(p.identity);
        else entry.participants.set(p.identity, p);
      }
      if (p) remember(name, p, line.event === 'participant_left');
    } else if (line.type === 'expired') {
      signOut('Your console session expired: sign in again.');
      return;
    }
    render();
  }

  function render(): void {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      draw();
    });
  }

  function participantRow(roomName: string, p: Participant, history: string[], isEnded: boolean): HTMLElement {
    const attributes = Object.entries(p.attributes ?? {}).filter(([k]) => k.startsWith('sip.'));
    const callId = p.attributes?.['sip.callID'];
    const q = callId ? quality[callId] : undefined;
    const speaking = listener.speakers.has(p.identity);
    const kind = (p.kind ?? 'STANDARD').toLowerCase();
    return h(
      'tr',
      {
        'data-identity': p.identity,
        'data-room': roomName,
        'data-kind': kind,
        'data-call-status': p.attributes?.['sip.callStatus'] ?? '',
        'data-status-history': history.join(' '),
        class: speaking ? 'speaking' : '',
      },
      h('th', { scope: 'row' }, speaking ? h('span', { class: 'dot', title: 'speaking' }, '● ') : null, p.identity, p.permission?.hidden ? h('span', { class: 'muted' }, ' (hidden)') : null),
      h('td', {}, kind),
      h('td', { class: 'status' }, history.length ? history.map((s, i) => [i ? ' → ' : '', h('span', { class: `chip ${s}` }, s)]) : (p.state ?? '').toLowerCase()),
      h(
        'td',
        { class: 'quality' },
        q
          ? `MOS ${q.mos ?? '–'}, loss ${pct(q.received?.loss)}, jitter ${q.received?.jitter_ms ?? '–'} ms`
          : callId && !isEnded
            ? 'measuring…'
            : '',
      ),
      h(
        'td',
        {},
        callId ? h('a', { href: `#/calls/${encodeURIComponent(callId)}` }, callId) : null,
        attributes.length
          ? h(
              'details',
              {},
              h('summary', {}, `${attributes.length} sip.* attributes`),
              h('dl', { class: 'attributes' }, attributes.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
            )
          : null,
      ),
    );
  }

  function table(rows: HTMLElement[]): HTMLElement {
    return h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        {},
        h('thead', {}, h('tr', {}, ...['Participant', 'Kind', 'Call status', 'Quality', 'Call'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, rows),
      ),
    );
  }

  function draw(): void {
    const names = [...rooms.keys()].sort();
    replace(
      list,
      names.length === 0 ? h('p', { class: 'muted' }, 'No rooms right now.') : null,
      names.map((name) => {
        const { participants } = rooms.get(name)!;
        const rows = [...participants.values()].map((p) => participantRow(name, p, seen.get(p.sid)?.statuses ?? [], false));
        return h(
          'section',
          { class: 'room', 'data-room': name, 'aria-label': `Room ${name}` },
          h(
            'div',
            { class: 'room-head' },
            h('h2', {}, name),
            h('span', { class: 'muted' }, `${participants.size} participant${participants.size === 1 ? '' : 's'}`),
            h('button', { type: 'button', class: 'listen-in', 'data-room': name, onclick: () => join(name, false) }, 'Listen in'),
            h('button', { type: 'button', class: 'talk', 'data-room': name, onclick: () => join(name, true) }, 'Talk'),
          ),
          rows.length ? table(rows) : h('p', { class: 'muted' }, 'Empty.'),
        );
      }),
    );
    const now = Date.now();
    for (const [sid, entry] of seen) {
      if (entry.endedAt && now - entry.endedAt > ENDED_KEEP_MS) seen.delete(sid);
    }
    // (this page's own listening and talking participants are not calls: left out)
    const mine = `${current()?.identity ?? '-'}-`;
    const gone = [...seen.values()]
      .filter((e) => e.endedAt && !e.participant.identity.startsWith(mine))
      .sort((a, b) => b.endedAt! - a.endedAt!);
    replace(ended, gone.length ? table(gone.map((e) => participantRow(e.room, e.participant, e.statuses, true))) : h('p', { class: 'muted' }, 'None in the last two minutes.'));
  }

  async function join(name: string, talk: boolean): Promise<void> {
    try {
      await listener.join(name, talk);
    } catch (e) {
      setBanner(`Cannot join ${name}: ${(e as Error).message}`, 'error');
    }
  }

  async function stream(): Promise<void> {
    let delay = 500;
    while (!stopped && current()) {
      try {
        const response = await request('/console/live', { signal: abort.signal });
        status.textContent = 'Live: changes appear as they happen.';
        setBanner(null);
        delay = 500;
        const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let newline: number;
          while ((newline = buffer.indexOf('\n')) >= 0) {
            const text = buffer.slice(0, newline);
            buffer = buffer.slice(newline + 1);
            if (text) handle(JSON.parse(text));
          }
        }
      } catch (e) {
        if (stopped || (e instanceof ApiError && e.status === 401)) return;
        if (e instanceof ApiError) {
          setBanner(`The live view failed: ${e.message}`, 'error');
        }
      }
      if (stopped || !current()) return;
      setBanner('Lost the connection to the server: reconnecting…', 'error');
      status.textContent = 'Reconnecting…';
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }

  draw();
  void stream();
  return () => {
    stopped = true;
    abort.abort();
    abort = new AbortController();
    void listener.leave();
  };
}

function pct(value: number | null | undefined): string {
  return value === null || value === undefined ? '–' : `${(value * 100).toFixed(1)}%`;
}
