// Nodes: GET /sipbridge/v1/nodes - every live node with Redis, else this one.
import { getJson } from './api';
import { h, replace } from './ui';

interface Node {
  id: string;
  state: string;
  calls: number;
  max_calls: number;
  rooms: number;
  cpu: number;
  sip: string;
  http: string;
  version: string;
  age: number;
}

export function nodesPage(main: HTMLElement): () => void {
  const body = h('div', { 'aria-live': 'polite' }, 'Loading…');
  main.append(h('h1', {}, 'Nodes'), body);
  let timer = 0;
  const load = async () => {
    try {
      const { nodes } = await getJson<{ nodes: Node[] }>('/sipbridge/v1/nodes');
      replace(
        body,
        h('p', {}, nodes.length === 1 ? 'One node (not clustered, or alone).' : `${nodes.length} nodes.`),
        h(
          'div',
          { class: 'scroll' },
          h(
            'table',
            {},
            h('thead', {}, h('tr', {}, ...['Node', 'State', 'Calls', 'Rooms', 'CPU %', 'SIP', 'HTTP', 'Version', 'Age s'].map((t) => h('th', { scope: 'col' }, t)))),
            h(
              'tbody',
              {},
              nodes.map((n) =>
                h(
                  'tr',
                  { 'data-node': n.id },
                  h('th', { scope: 'row' }, n.id),
                  h('td', {}, n.state),
                  h('td', {}, `${n.calls} / ${n.max_calls}`),
                  h('td', {}, n.rooms),
                  h('td', {}, h('meter', { min: 0, max: 100, value: Math.min(100, n.cpu), 'aria-label': `CPU ${n.cpu}%` }), ` ${n.cpu}`),
                  h('td', {}, n.sip),
                  h('td', {}, n.http),
                  h('td', {}, n.version),
                  h('td', {}, n.age),
                ),
              ),
            ),
          ),
        ),
      );
    } catch (e) {
      replace(body, h('p', { class: 'form-error', role: 'alert' }, `Cannot list the nodes: ${(e as Error).message}`));
    }
    timer = window.setTimeout(load, 2000);
  };
  load();
  return () => window.clearTimeout(timer);
}
