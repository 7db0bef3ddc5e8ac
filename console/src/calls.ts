// Calls: the call log (POST /twirp/sipbridge.CallLog/ListCalls) with its filters and pages, and
// one call's page: its record and quality over time (GET /console/calls/<id>), its SIP ladder
// (GET /sipbridge/v1/calls/<id>/trace), its pcap and the transfers (REFERs) in it.
import { getJson, request, twirp } from './api';
import { field, h, replace, svg, time } from './ui';

interface CallInfo {
  call_id: string;
  sip_call_id?: string;
  trunk_id?: string;
  room_name?: string;
  participant_identity?: string;
  from_uri?: { user?: string; host?: string };
  to_uri?: { user?: string; host?: string };
  call_direction?: string;
  call_status?: string;
  created_at?: string;
  started_at?: string;
  ended_at?: string;
  disconnect_reason?: string;
  error?: string;
  call_status_code?: { code?: number | string; status?: string };
  audio_codec?: string;
  media_encryption?: string;
}
interface TraceEntry {
  kind: 'message' | 'gap';
  time?: number;
  direction?: 'in' | 'out';
  transport?: string;
  remote_host?: string;
  remote_port?: number;
  local_host?: string;
  local_port?: number;
  text?: string;
  messages?: number;
  bytes?: number;
}
interface QualitySample {
  time?: number;
  mos?: number | null;
  rtt_ms?: number | null;
  codec?: string;
  received?: { loss?: number | null; jitter_ms?: number | null; packets?: number; lost?: number };
  sent?: { loss?: number | null; jitter_ms?: number | null; packets?: number };
}

const STATUSES = ['', 'call_incoming', 'participant_joined', 'active', 'disconnected', 'error'];

const short = (value: string | undefined) => (value ?? '').replace(/^SC[SD]_/, '').toLowerCase();
// SIPStatus in JSON: {code: "SIP_STATUS_OK" (its enum name) or a number, status: "OK"}
const sipStatus = (s: { code?: number | string; status?: string } | undefined) =>
  !s?.code ? '' : typeof s.code === 'number' ? `${s.code} ${s.status ?? ''}`.trim() : s.code.replace(/^SIP_STATUS_/, '').toLowerCase().replace(/_/g, ' ');

export function callsPage(main: HTMLElement): () => void {
  const inputs = {
    room: h('input', { name: 'room' }),
    trunk: h('input', { name: 'trunk', placeholder: 'ST_…' }),
    status: h('select', { name: 'status' }, STATUSES.map((s) => h('option', { value: s }, s || 'any'))),
    number: h('input', { name: 'number', placeholder: '+1…' }),
    since: h('input', { name: 'since', placeholder: '2h, 7d, 2026-12-01' }),
    until: h('input', { name: 'until' }),
  };
  const error = h('p', { class: 'form-error', role: 'alert' });
  const results = h('div', { id: 'calls', 'aria-live': 'polite' });
  const pager = h('div', { class: 'pager' });
  const tokens: string[] = ['']; // the page tokens of the pages so far
  let page = 0;
  const form = h(
    'form',
    { class: 'filters', 'aria-label': 'Filters' },
    field('Room', inputs.room),
    field('Trunk', inputs.trunk),
    field('Status', inputs.status),
    field('Number', inputs.number),
    field('Since', inputs.since),
    field('Until', inputs.until),
    h('button', { type: 'submit' }, 'Filter'),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    tokens.splice(1);
    page = 0;
    void load();
  });
  main.append(h('h1', {}, 'Calls'), form, error, results, pager);

  async function load(): Promise<void> {
    error.textContent = '';
    const query: Record<string, unknown> = { limit: 20, page_token: tokens[page] };
    for (const [name, input] of Object.entries(inputs)) if (input.value.trim()) query[name] = input.value.trim();
    try {
      const reply = await twirp<{ items: CallInfo[]; next_page_token: string }>('sipbridge.CallLog', 'ListCalls', query);
      if (reply.next_page_token) tokens[page + 1] = reply.next_page_token;
      else tokens.splice(page + 1);
      replace(
        results,
        reply.items.length === 0
          ? h('p', { class: 'muted' }, 'No calls match.')
          : h(
              'div',
              { class: 'scroll' },
              h(
                'table',
                {},
                h('thead', {}, h('tr', {}, ...['Started', 'Direction', 'From', 'To', 'Room', 'Status', 'Call'].map((t) => h('th', { scope: 'col' }, t)))),
                h(
                  'tbody',
                  {},
                  reply.items.map((c) =>
                    h(
                      'tr',
                      { 'data-call-id': c.call_id },
                      h('td', {}, time(c.created_at)),
                      h('td', {}, short(c.call_direction)),
                      h('td', {}, c.from_uri?.user ?? ''),
                      h('td', {}, c.to_uri?.user ?? ''),
                      h('td', {}, c.room_name ?? ''),
                      h('td', {}, short(c.call_status), c.call_status_code?.code ? ` (${sipStatus(c.call_status_code)})` : ''),
                      h('td', {}, h('a', { href: `#/calls/${encodeURIComponent(c.call_id)}` }, c.call_id)),
                    ),
                  ),
                ),
              ),
            ),
      );
      replace(
        pager,
        h('button', { type: 'button', disabled: page === 0, onclick: () => ((page -= 1), load()) }, 'Previous page'),
        ` Page ${page + 1} `,
        h('button', { type: 'button', id: 'next-page', disabled: !tokens[page + 1], onclick: () => ((page += 1), load()) }, 'Next page'),
      );
    } catch (e) {
      error.textContent = (e as Error).message;
    }
  }
  void load();
  return () => {};
}

export function callPage(main: HTMLElement, callId: string): () => void {
  const summary = h('div', { id: 'call-summary' }, 'Loading…');
  const chart = h('div', { id: 'quality' });
  const ladder = h('div', { id: 'ladder' });
  const records = h('div', { id: 'transfer-records' });
  const transfers = h('div', { id: 'transfers' });
  const pcap = h('button', { type: 'button', id: 'pcap' }, 'Download the pcap');
  const pcapNote = h('span', { class: 'muted', 'aria-live': 'polite' });
  pcap.addEventListener('click', async () => {
    try {
      const response = await request(`/sipbridge/v1/calls/${encodeURIComponent(callId)}/pcap`);
      const blob = await response.blob();
      const link = h('a', { href: URL.createObjectURL(blob), download: `${callId}.pcap` });
      link.click();
      pcapNote.textContent = ` ${blob.size} bytes`;
      pcap.dataset.bytes = String(blob.size);
    } catch (e) {
      pcapNote.textContent = ` ${(e as Error).message}`;
    }
  });
  main.append(
    h('p', {}, h('a', { href: '#/calls' }, '← All calls')),
    h('h1', {}, `Call ${callId}`),
    summary,
    h('h2', {}, 'Quality over time'),
    chart,
    h('h2', {}, 'SIP ladder'),
    h('p', {}, pcap, pcapNote),
    ladder,
    h('h2', {}, 'Transfers'),
    records,
    transfers,
  );
  let timer = 0;
  let stopped = false;

  async function load(): Promise<void> {
    let live = false;
    try {
      const { call, quality, transfers: moves } = await getJson<{ call: CallInfo; quality: QualitySample[]; transfers: Transfer[] | null }>(
        `/console/calls/${encodeURIComponent(callId)}`,
      );
      live = !call.ended_at || call.ended_at === '0';
      replace(summary, describe(call));
      replace(chart, qualityChart(quality));
      replace(records, transferTable(moves));
    } catch (e) {
      replace(summary, h('p', { class: 'form-error', role: 'alert' }, (e as Error).message));
    }
    try {
      const trace = await getJson<{ entries: TraceEntry[]; call_id: string }>(`/sipbridge/v1/calls/${encodeURIComponent(callId)}/trace`);
      replace(ladder, drawLadder(trace.entries));
      const refers = trace.entries.filter((e) => e.kind === 'message' && /^(REFER|NOTIFY) /.test(e.text ?? ''));
      replace(
        transfers,
        refers.length
          ? [
              h('p', {}, 'In the ladder:'),
              h('ul', { class: 'refers' }, refers.map((e) => h('li', {}, `${e.direction === 'in' ? 'from the carrier' : 'to the carrier'}: ${firstLine(e.text)}${header(e.text, 'Refer-To') ? ` (Refer-To ${header(e.text, 'Refer-To')})` : ''}`))),
            ]
          : null,
      );
    } catch (e) {
      replace(ladder, h('p', { class: 'muted' }, (e as Error).message));
    }
    if (live && !stopped) timer = window.setTimeout(load, 3000);
  }
  void load();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

interface Transfer {
  transfer_id: string;
  transfer_to?: string;
  transfer_status?: string;
  transfer_initiated_at_ns?: string;
  transfer_completed_at_ns?: string;
  error?: string;
  reason?: string;
  transfer_status_code?: { code?: number | string; status?: string };
}

function transferTable(moves: Transfer[] | null): HTMLElement {
  if (moves === null) return h('p', { class: 'muted' }, 'This store (Redis) keeps no index of transfers by call.');
  if (!moves.length) return h('p', { class: 'muted' }, 'None.');
  return h(
    'div',
    { class: 'scroll' },
    h(
      'table',
      {},
      h('thead', {}, h('tr', {}, ...['Transfer', 'To', 'Status', 'SIP', 'Started', 'Ended', 'Error'].map((t) => h('th', { scope: 'col' }, t)))),
      h(
        'tbody',
        {},
        moves.map((t) =>
          h(
            'tr',
            { 'data-transfer-id': t.transfer_id, 'data-status': (t.transfer_status ?? '').replace(/^STS_/, '').toLowerCase() },
            h('th', { scope: 'row' }, t.transfer_id),
            h('td', {}, t.transfer_to ?? ''),
            h('td', {}, (t.transfer_status ?? '').replace(/^STS_/, '').toLowerCase().replace(/_/g, ' ')),
            h('td', {}, sipStatus(t.transfer_status_code)),
            h('td', {}, time(Number(t.transfer_initiated_at_ns ?? 0) / 1e9)),
            h('td', {}, time(Number(t.transfer_completed_at_ns ?? 0) / 1e9)),
            h('td', {}, t.error ?? ''),
          ),
        ),
      ),
    ),
  );
}

function describe(call: CallInfo): HTMLElement {
  const rows: [string, string][] = [
    ['Direction', short(call.call_direction)],
    ['Status', `${short(call.call_status)}${call.call_status_code?.code ? ` (${sipStatus(call.call_status_code)})` : ''}`],
    ['From', call.from_uri?.user ?? ''],
    ['To', call.to_uri?.user ?? ''],
    ['Room', call.room_name ?? ''],
    ['Participant', call.participant_identity ?? ''],
    ['Trunk', call.trunk_id ?? ''],
    ['Created', time(call.created_at)],
    ['Answered', time(call.started_at)],
    ['Ended', time(call.ended_at)],
    ['Codec', `${call.audio_codec ?? ''} ${call.media_encryption ?? ''}`],
    ['Reason', call.disconnect_reason ?? ''],
    ['Error', call.error ?? ''],
    ['SIP Call-ID', call.sip_call_id ?? ''],
  ];
  return h('dl', { class: 'summary', 'data-status': short(call.call_status) }, rows.filter(([, v]) => v.trim()).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function qualityChart(samples: QualitySample[]): HTMLElement {
  if (!samples.length) return h('p', { class: 'muted', 'data-samples': 0 }, 'No quality recorded (the call had no media, or it is not known to this node).');
  const width = 640;
  const height = 160;
  const pad = 30;
  const t0 = samples[0].time ?? 0;
  const t1 = Math.max(t0 + 1, samples[samples.length - 1].time ?? t0 + 1);
  const x = (t: number | undefined) => pad + ((width - 2 * pad) * ((t ?? t0) - t0)) / (t1 - t0);
  const line = (values: (number | null | undefined)[], max: number, cls: string) => {
    const points = samples
      .map((s, i) => [x(s.time), values[i]] as const)
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([px, v]) => `${px.toFixed(1)},${(height - pad - ((height - 2 * pad) * Math.min(v!, max)) / max).toFixed(1)}`);
    return svg('polyline', { points: points.join(' '), class: cls, fill: 'none' });
  };
  const chart = svg(
    'svg',
    { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'MOS, loss and jitter over the call', class: 'chart' },
    svg('line', { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, class: 'axis' }),
    svg('line', { x1: pad, y1: pad, x2: pad, y2: height - pad, class: 'axis' }),
    line(samples.map((s) => s.mos), 5, 'mos'),
    line(samples.map((s) => (s.received?.loss ?? null) === null ? null : s.received!.loss! * 100), 20, 'loss'),
    line(samples.map((s) => s.received?.jitter_ms), 100, 'jitter'),
  );
  for (const s of samples) chart.append(svg('circle', { cx: x(s.time), cy: height - pad - ((height - 2 * pad) * Math.min(s.mos ?? 0, 5)) / 5, r: 3, class: 'mos' }));
  const last = samples[samples.length - 1];
  return h(
    'figure',
    { 'data-samples': samples.length, 'data-mos': last.mos ?? '' },
    chart,
    h('figcaption', {}, h('span', { class: 'key mos' }, 'MOS (0-5)'), ' ', h('span', { class: 'key loss' }, 'loss % received (0-20)'), ' ', h('span', { class: 'key jitter' }, 'jitter ms (0-100)')),
    h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        { class: 'compact' },
        h('thead', {}, h('tr', {}, ...['Time', 'MOS', 'Codec', 'Received', 'Loss', 'Jitter ms', 'Sent', 'RTT ms'].map((t) => h('th', { scope: 'col' }, t)))),
        h(
          'tbody',
          {},
          samples.map((s) =>
            h(
              'tr',
              {},
              h('td', {}, s.time ? time(s.time).slice(11) : 'last'),
              h('td', {}, s.mos ?? '–'),
              h('td', {}, s.codec ?? ''),
              h('td', {}, s.received?.packets ?? 0),
              h('td', {}, s.received?.loss === null || s.received?.loss === undefined ? '–' : `${(s.received.loss * 100).toFixed(2)}%`),
              h('td', {}, s.received?.jitter_ms ?? '–'),
              h('td', {}, s.sent?.packets ?? 0),
              h('td', {}, s.rtt_ms ?? '–'),
            ),
          ),
        ),
      ),
    ),
  );
}

const firstLine = (text: string | undefined) => (text ?? '').split(/\r?\n/, 1)[0];

function header(text: string | undefined, name: string): string {
  const match = (text ?? '').match(new RegExp(`^${name}:\\s*(.*)$`, 'im'));
  return match ? match[1].trim() : '';
}

// The ladder: us on the left, the carrier on the right; each message a row with its arrow and
// first line, its full text behind a disclosure (keyboard: Tab to it, Enter opens it).
function drawLadder(entries: TraceEntry[]): HTMLElement {
  const messages = entries.filter((e) => e.kind === 'message');
  if (!messages.length) return h('p', { class: 'muted' }, 'No SIP messages kept.');
  const t0 = messages[0].time ?? 0;
  const first = messages[0];
  const carrier = `${first.remote_host}:${first.remote_port} (${first.transport})`;
  return h(
    'div',
    { class: 'ladder' },
    h('div', { class: 'ladder-head' }, h('span', {}, `us ${first.local_host}:${first.local_port}`), h('span', {}, `carrier ${carrier}`)),
    h(
      'ol',
      { 'aria-label': 'SIP messages in order' },
      entries.map((e) => {
        if (e.kind === 'gap') return h('li', { class: 'gap' }, `… ${e.messages} messages (${e.bytes} bytes) not kept …`);
        const label = firstLine(e.text).replace(/ SIP\/2\.0$/, '').replace(/^SIP\/2\.0 /, '');
        const elsewhere = e.remote_host !== first.remote_host || e.remote_port !== first.remote_port ? ` [${e.remote_host}:${e.remote_port}]` : '';
        const outgoing = e.direction === 'out';
        return h(
          'li',
          { class: `msg ${outgoing ? 'out' : 'in'}`, 'data-direction': e.direction, 'data-first-line': label },
          h(
            'details',
            {},
            h(
              'summary',
              { 'aria-label': `${label}, ${outgoing ? 'us to the carrier' : 'carrier to us'}, at +${((e.time ?? t0) - t0).toFixed(3)} s` },
              h('span', { class: 'at' }, `+${((e.time ?? t0) - t0).toFixed(3)}s`),
              h('span', { class: 'arrow', 'aria-hidden': 'true' }, outgoing ? '' : '◀', h('span', { class: 'label' }, label + elsewhere), outgoing ? '▶' : ''),
            ),
            h('pre', {}, e.text ?? ''),
          ),
        );
      }),
    ),
  );
}
