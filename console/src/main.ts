// The console's shell: sign-in, the navigation and the hash routes
//   #/live  #/calls  #/calls/<call id>  #/config  #/nodes
import './style.css';
import { ApiError, current, signIn, signOut, whenExpired } from './api';
import { callPage, callsPage } from './calls';
import { configPage } from './config';
import { livePage } from './live';
import { nodesPage } from './nodes';
import { field, h, replace, setBanner } from './ui';

const main = document.getElementById('main')!;
const nav = document.getElementById('nav')!;
let leave: (() => void) | void;

function signInPage(message = ''): void {
  nav.hidden = true;
  const key = h('input', { name: 'key', autocomplete: 'username', required: true });
  const secret = h('input', {
    name: 'secret',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const error = h('p', { class: 'form-error', id: 'sign-in-error', role: 'alert' }, message);
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { class: 'sign-in', 'aria-labelledby': 'sign-in-title', 'aria-describedby': 'sign-in-error' },
    h('h1', { id: 'sign-in-title', tabindex: '-1' }, 'Sign in'),
    h('p', {}, 'With an API key and secret of this server. The page keeps only a 10-minute token, in memory.'),
    field('API key', key),
    field('API secret', secret),
    error,
    button,
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    button.disabled = true;
    error.textContent = '';
    try {
      await signIn(key.value.trim(), secret.value);
      secret.value = '';
      if (!location.hash || location.hash === '#/sign-in') location.hash = '#/live';
      else route();
    } catch (e) {
      const text = e instanceof ApiError ? e.message : `cannot reach the server: ${e}`;
      error.textContent = text;
      secret.setAttribute('aria-invalid', 'true');
      secret.focus();
    } finally {
      button.disabled = false;
    }
  });
  leave?.();
  leave = undefined;
  replace(main, form);
  (message ? secret : key).focus();
}

function route(): void {
  if (!current()) {
    signInPage();
    return;
  }
  nav.hidden = false;
  const path = location.hash.replace(/^#/, '') || '/live';
  for (const link of nav.querySelectorAll('a')) {
    const here = path.startsWith(link.getAttribute('href')!.slice(1));
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  leave?.();
  leave = undefined;
  setBanner(null);
  main.replaceChildren();
  const call = path.match(/^\/calls\/(.+)$/);
  if (call) leave = callPage(main, decodeURIComponent(call[1]));
  else if (path.startsWith('/calls')) leave = callsPage(main);
  else if (path.startsWith('/config')) leave = configPage(main);
  else if (path.startsWith('/nodes')) leave = nodesPage(main);
  else leave = livePage(main);
  main.querySelector<HTMLElement>('h1')?.setAttribute('tabindex', '-1');
  main.querySelector<HTMLElement>('h1')?.focus();
}

whenExpired((message) => {
  setBanner(null);
  signInPage(message);
});
document.getElementById('sign-out')!.addEventListener('click', () => signOut('Signed out.'));
window.addEventListener('hashchange', route);
route();
