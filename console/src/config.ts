// Configuration: inbound and outbound trunks and dispatch rules, listed, created, edited and
// deleted through the Twirp SIP service (livekit.SIP). The server validates; its message
// ("trunk.numbers[0]: 'x' is not a phone number") is shown at the field it names, or above the
// form when it names none (a conflict between trunks, say).
import { ApiError, twirp } from './api';
import { field, h, replace } from './ui';

type Item = Record<string, any>;
interface Spec {
  name: string; // the form field; for trunks the proto field too
  label: string;
  kind?: 'text' | 'list' | 'password' | 'select' | 'checkbox';
  options?: [string, string][];
  hint?: string;
}
interface Kind {
  id: string; // tab id
  title: string;
  idField: string;
  list: string;
  create: string;
  update: string;
  remove: string;
  removeField: string;
  wrap: string; // the create request's field
  fields: Spec[];
  toForm: (item: Item) => Record<string, string | boolean>;
  fromForm: (values: Record<string, string | boolean>, item: Item) => Item;
  columns: [string, (item: Item) => string][];
}

const list = (v: string | boolean) => String(v).split(/[\n,]+/).map((s) => s.trim()).filter(Boolean);
const joined = (v: unknown) => (Array.isArray(v) ? v.join(', ') : '');

function plain(names: string[], lists: string[]) {
  return {
    toForm: (item: Item) => Object.fromEntries(names.map((n) => [n, lists.includes(n) ? joined(item[n]) : (item[n] ?? '')])),
    fromForm: (values: Record<string, string | boolean>, item: Item) => {
      const out: Item = { ...item };
      for (const n of names) out[n] = lists.includes(n) ? list(values[n]) : values[n];
      delete out.created_at;
      delete out.updated_at;
      return out;
    },
  };
}

const INBOUND: Kind = {
  id: 'inbound',
  title: 'Inbound trunks',
  idField: 'sip_trunk_id',
  list: 'ListSIPInboundTrunk',
  create: 'CreateSIPInboundTrunk',
  update: 'UpdateSIPInboundTrunk',
  remove: 'DeleteSIPTrunk',
  removeField: 'sip_trunk_id',
  wrap: 'trunk',
  fields: [
    { name: 'name', label: 'Name' },
    { name: 'numbers', label: 'Numbers', kind: 'list', hint: 'Comma-separated, e.g. +15105550100' },
    { name: 'allowed_addresses', label: 'Allowed addresses', kind: 'list', hint: 'IPs, CIDRs or host names; empty: any' },
    { name: 'allowed_numbers', label: 'Allowed callers', kind: 'list' },
    { name: 'auth_username', label: 'Auth user name' },
    { name: 'auth_password', label: 'Auth password', kind: 'password' },
    { name: 'metadata', label: 'Metadata' },
  ],
  ...plain(
    ['name', 'numbers', 'allowed_addresses', 'allowed_numbers', 'auth_username', 'auth_password', 'metadata'],
    ['numbers', 'allowed_addresses', 'allowed_numbers'],
  ),
  columns: [
    ['Name', (t) => t.name],
    ['Numbers', (t) => joined(t.numbers)],
    ['Allowed', (t) => joined(t.allowed_addresses) || 'any'],
  ],
};

const OUTBOUND: Kind = {
  id: 'outbound',
  title: 'Outbound trunks',
  idField: 'sip_trunk_id',
  list: 'ListSIPOutboundTrunk',
  create: 'CreateSIPOutboundTrunk',
  update: 'UpdateSIPOutboundTrunk',
  remove: 'DeleteSIPTrunk',
  removeField: 'sip_trunk_id',
  wrap: 'trunk',
  fields: [
    { name: 'name', label: 'Name' },
    { name: 'address', label: 'Address', hint: 'host[:port] of the carrier' },
    {
      name: 'transport',
      label: 'Transport',
      kind: 'select',
      options: [['SIP_TRANSPORT_AUTO', 'auto'], ['SIP_TRANSPORT_UDP', 'UDP'], ['SIP_TRANSPORT_TCP', 'TCP'], ['SIP_TRANSPORT_TLS', 'TLS']],
    },
    { name: 'numbers', label: 'Numbers', kind: 'list', hint: 'Caller numbers this trunk may use' },
    { name: 'auth_username', label: 'Auth user name' },
    { name: 'auth_password', label: 'Auth password', kind: 'password' },
    { name: 'metadata', label: 'Metadata' },
  ],
  ...plain(['name', 'address', 'transport', 'numbers', 'auth_username', 'auth_password', 'metadata'], ['numbers']),
  columns: [
    ['Name', (t) => t.name],
    ['Address', (t) => t.address],
    ['Numbers', (t) => joined(t.numbers)],
  ],
};

const RULE_TYPES: [string, string][] = [
  ['dispatch_rule_direct', 'direct: one room'],
  ['dispatch_rule_individual', 'individual: a room per caller'],
  ['dispatch_rule_callee', 'callee: a room per number called'],
];

const RULES: Kind = {
  id: 'rules',
  title: 'Dispatch rules',
  idField: 'sip_dispatch_rule_id',
  list: 'ListSIPDispatchRule',
  create: 'CreateSIPDispatchRule',
  update: 'UpdateSIPDispatchRule',
  remove: 'DeleteSIPDispatchRule',
  removeField: 'sip_dispatch_rule_id',
  wrap: 'dispatch_rule',
  fields: [
    { name: 'name', label: 'Name' },
    { name: 'type', label: 'Type', kind: 'select', options: RULE_TYPES },
    { name: 'room', label: 'Room (direct) or room prefix' },
    { name: 'pin', label: 'PIN', hint: 'Optional: callers type it first' },
    { name: 'trunk_ids', label: 'Trunk ids', kind: 'list', hint: 'Empty: every trunk' },
    { name: 'inbound_numbers', label: 'Caller numbers', kind: 'list', hint: 'Empty: any caller' },
    { name: 'hide_phone_number', label: 'Hide the phone number', kind: 'checkbox' },
    { name: 'metadata', label: 'Metadata' },
  ],
  toForm: (r) => {
    const type = RULE_TYPES.map(([t]) => t).find((t) => r.rule?.[t]) ?? 'dispatch_rule_direct';
    const inner = r.rule?.[type] ?? {};
    return {
      name: r.name ?? '',
      type,
      room: inner.room_name ?? inner.room_prefix ?? '',
      pin: inner.pin ?? '',
      trunk_ids: joined(r.trunk_ids),
      inbound_numbers: joined(r.inbound_numbers),
      hide_phone_number: !!r.hide_phone_number,
      metadata: r.metadata ?? '',
    };
  },
  fromForm: (v, item) => {
    const type = String(v.type);
    const inner: Item = type === 'dispatch_rule_direct' ? { room_name: v.room } : { room_prefix: v.room };
    if (v.pin) inner.pin = v.pin;
    const out: Item = {
      ...item,
      name: v.name,
      rule: { [type]: inner },
      trunk_ids: list(v.trunk_ids),
      inbound_numbers: list(v.inbound_numbers),
      hide_phone_number: !!v.hide_phone_number,
      metadata: v.metadata,
    };
    delete out.created_at;
    delete out.updated_at;
    return out;
  },
  columns: [
    ['Name', (r) => r.name],
    ['Rule', (r) => describeRule(r)],
    ['Trunks', (r) => joined(r.trunk_ids) || 'any'],
  ],
};

function describeRule(r: Item): string {
  const rule = r.rule ?? {};
  if (rule.dispatch_rule_direct) return `direct to ${rule.dispatch_rule_direct.room_name}${rule.dispatch_rule_direct.pin ? ' (PIN)' : ''}`;
  if (rule.dispatch_rule_individual) return `individual, prefix ${rule.dispatch_rule_individual.room_prefix}`;
  if (rule.dispatch_rule_callee) return `callee, prefix ${rule.dispatch_rule_callee.room_prefix}`;
  return '';
}

// The form field a server message names ("trunk.numbers[0]: ...", "dispatch_rule.rule.
// dispatch_rule_direct.room_name: must be set", "trunk.auth_username and trunk.auth_password
// must be set together").
const ALIASES: Record<string, string> = { room_name: 'room', room_prefix: 'room', rule: 'type' };

export function fieldsNamed(message: string, names: string[]): string[] {
  const head = message.includes(': ') ? message.slice(0, message.indexOf(': ')) : message;
  const found: string[] = [];
  for (const token of head.match(/[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*(?:\[\d+\])?/g) ?? []) {
    const last = token.replace(/\[\d+\]$/, '').split('.').pop()!;
    const name = ALIASES[last] ?? last;
    if (names.includes(name) && !found.includes(name)) found.push(name);
  }
  return found;
}

export function configPage(main: HTMLElement): () => void {
  const tabs = h('div', { role: 'tablist', 'aria-label': 'What to configure', class: 'tabs' });
  const panel = h('div', { role: 'tabpanel', id: 'config-panel' });
  main.append(h('h1', {}, 'Configuration'), tabs, panel);
  const kinds = [INBOUND, OUTBOUND, RULES];
  const buttons = kinds.map((kind) =>
    h('button', { type: 'button', role: 'tab', id: `tab-${kind.id}`, 'aria-controls': 'config-panel', onclick: () => show(kind) }, kind.title),
  );
  tabs.append(...buttons);
  tabs.addEventListener('keydown', (event) => {
    const at = buttons.indexOf(document.activeElement as HTMLButtonElement);
    if (at < 0 || !['ArrowLeft', 'ArrowRight'].includes(event.key)) return;
    const next = buttons[(at + (event.key === 'ArrowRight' ? 1 : buttons.length - 1)) % buttons.length];
    next.focus();
    next.click();
  });

  function show(kind: Kind): void {
    buttons.forEach((b, i) => {
      b.setAttribute('aria-selected', String(kinds[i] === kind));
      b.tabIndex = kinds[i] === kind ? 0 : -1;
    });
    panel.setAttribute('aria-labelledby', `tab-${kind.id}`);
    replace(panel, kindView(kind));
  }
  show(INBOUND);
  return () => {};
}

function kindView(kind: Kind): HTMLElement {
  const table = h('div', { class: 'scroll', 'aria-live': 'polite' });
  const formBox = h('div');
  const status = h('p', { class: 'muted', role: 'status' });
  const view = h(
    'section',
    { 'data-kind': kind.id },
    h('h2', {}, kind.title),
    status,
    table,
    h('button', { type: 'button', class: 'create', onclick: () => edit(null) }, `New ${kind.title.replace(/s$/, '').toLowerCase()}`),
    formBox,
  );

  async function load(): Promise<void> {
    try {
      const { items } = await twirp<{ items: Item[] }>('livekit.SIP', kind.list, {});
      replace(
        table,
        items.length === 0
          ? h('p', { class: 'muted' }, 'None yet.')
          : h(
              'table',
              {},
              h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Id'), kind.columns.map(([t]) => h('th', { scope: 'col' }, t)), h('th', { scope: 'col' }, 'Actions'))),
              h(
                'tbody',
                {},
                items.map((item) => {
                  const remove = h('button', { type: 'button', class: 'danger' }, 'Delete');
                  remove.addEventListener('click', async () => {
                    if (remove.dataset.armed !== '1') {
                      remove.dataset.armed = '1';
                      remove.textContent = 'Confirm delete';
                      return;
                    }
                    try {
                      await twirp('livekit.SIP', kind.remove, { [kind.removeField]: item[kind.idField] });
                      status.textContent = `Deleted ${item[kind.idField]}.`;
                      await load();
                    } catch (e) {
                      status.textContent = `Cannot delete: ${(e as Error).message}`;
                    }
                  });
                  return h(
                    'tr',
                    { 'data-id': item[kind.idField], 'data-name': item.name ?? '' },
                    h('th', { scope: 'row' }, item[kind.idField]),
                    kind.columns.map(([, value]) => h('td', {}, value(item) ?? '')),
                    h('td', {}, h('button', { type: 'button', class: 'edit', onclick: () => edit(item) }, 'Edit'), ' ', remove),
                  );
                }),
              ),
            ),
      );
    } catch (e) {
      replace(table, h('p', { class: 'form-error', role: 'alert' }, (e as Error).message));
    }
  }

  function edit(item: Item | null): void {
    const values = item ? kind.toForm(item) : {};
    const inputs = new Map<string, HTMLInputElement | HTMLSelectElement>();
    const wrappers: HTMLElement[] = [];
    for (const spec of kind.fields) {
      let input: HTMLInputElement | HTMLSelectElement;
      if (spec.kind === 'select') {
        input = h('select', { name: spec.name }, spec.options!.map(([v, t]) => h('option', { value: v }, t)));
        if (values[spec.name]) input.value = String(values[spec.name]);
      } else {
        input = h('input', {
          name: spec.name,
          type: spec.kind === 'password' ? 'password' : spec.kind === 'checkbox' ? 'checkbox' : 'text',
          autocomplete: spec.kind === 'password' ? 'new-password' : 'off',
        });
        if (spec.kind === 'checkbox') input.checked = !!values[spec.name];
        else input.value = String(values[spec.name] ?? '');
      }
      inputs.set(spec.name, input);
      wrappers.push(field(spec.label, input, spec.hint));
    }
    const error = h('p', { class: 'form-error', role: 'alert' });
    const form = h(
      'form',
      { class: 'editor', 'aria-label': item ? `Edit ${item[kind.idField]}` : `New ${kind.title}` },
      h('h3', {}, item ? `Edit ${item[kind.idField]}` : `New ${kind.title.replace(/s$/, '').toLowerCase()}`),
      error,
      wrappers,
      h('button', { type: 'submit' }, item ? 'Save' : 'Create'),
      ' ',
      h('button', { type: 'button', onclick: () => formBox.replaceChildren() }, 'Cancel'),
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      error.textContent = '';
      for (const input of inputs.values()) {
        input.removeAttribute('aria-invalid');
        document.getElementById(`${input.id}-error`)!.textContent = '';
      }
      const formValues: Record<string, string | boolean> = {};
      for (const [name, input] of inputs) formValues[name] = input instanceof HTMLInputElement && input.type === 'checkbox' ? input.checked : input.value.trim();
      const body = kind.fromForm(formValues, item ?? {});
      try {
        if (item) await twirp('livekit.SIP', kind.update, { [kind.idField]: item[kind.idField], replace: body });
        else await twirp('livekit.SIP', kind.create, { [kind.wrap]: body });
        formBox.replaceChildren();
        status.textContent = item ? `Saved ${item[kind.idField]}.` : 'Created.';
        await load();
      } catch (e) {
        const message = (e as Error).message;
        const conflict = e instanceof ApiError && (e.code === 'already_exists' || /conflict/i.test(message));
        // a conflict names another trunk or rule, not a field: said above the form, and the
        // numbers that clash marked
        const named = !(e instanceof ApiError)
          ? []
          : conflict
            ? ['numbers', 'inbound_numbers'].filter((n) => inputs.has(n) && /number/.test(message))
            : fieldsNamed(message, [...inputs.keys()]);
        for (const name of named) {
          const input = inputs.get(name)!;
          input.setAttribute('aria-invalid', 'true');
          document.getElementById(`${input.id}-error`)!.textContent = message;
        }
        error.textContent = conflict
          ? `Conflict: ${message}`
          : named.length
            ? 'The server refused it: see the field marked below.'
            : message;
        (named.length ? inputs.get(named[0])! : error).focus?.();
      }
    });
    replace(formBox, form);
    inputs.values().next().value?.focus();
  }

  void load();
  return view;
}
