// The server: sign-in (POST /console/token), Twirp (POST /twirp/...) and the console's GETs, all
// with the short-lived console token, which lives in this module's memory only (a reload signs
// in again: nothing is kept in localStorage or cookies).

export interface Session {
  token: string;
  identity: string;
  expiresAt: number; // epoch seconds
}

export class ApiError extends Error {
  constructor(
    public code: string,
    message: string,
    public status: number,
    public meta: Record<string, string> = {},
  ) {
    super(message);
  }
}

let session: Session | null = null;
let expiryTimer: number | undefined;
let onExpired: (message: string) => void = () => {};

export function current(): Session | null {
  return session;
}

export function whenExpired(callback: (message: string) => void): void {
  onExpired = callback;
}

export function signOut(message = ''): void {
  session = null;
  window.clearTimeout(expiryTimer);
  onExpired(message);
}

async function errorOf(response: Response): Promise<ApiError> {
  let code = 'unknown';
  let message = `HTTP ${response.status}`;
  let meta: Record<string, string> = {};
  try {
    const body = await response.json();
    code = body.code ?? code;
    message = body.msg ?? message;
    meta = body.meta ?? {};
  } catch {
    // not JSON: keep the status
  }
  return new ApiError(code, message, response.status, meta);
}

// `?session=SECONDS` in the page's address asks for a shorter session than the 10 minutes.
export async function signIn(key: string, secret: string): Promise<Session> {
  const session_s = Number(new URLSearchParams(location.search).get('session'));
  const response = await fetch('/console/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(session_s ? { key, secret, ttl_s: session_s } : { key, secret }),
  });
  if (!response.ok) throw await errorOf(response);
  const body = await response.json();
  session = { token: body.token, identity: body.identity, expiresAt: body.expires_at };
  window.clearTimeout(expiryTimer);
  const left = session.expiresAt * 1000 - Date.now();
  expiryTimer = window.setTimeout(
    () => signOut('Your console session expired: sign in again.'),
    Math.max(0, left),
  );
  return session;
}

// Any request with the token; an `unauthenticated` answer ends the session.
export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  if (!session) {
    signOut('Sign in first.');
    throw new ApiError('unauthenticated', 'not signed in', 401);
  }
  const headers = new Headers(init.headers);
  headers.set('Authorization', `Bearer ${session.token}`);
  const response = await fetch(path, { ...init, headers });
  if (response.status === 401) {
    const error = await errorOf(response);
    signOut(
      error.message.includes('expired')
        ? 'Your console session expired: sign in again.'
        : `Signed out: ${error.message}`,
    );
    throw error;
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson<T>(path: string): Promise<T> {
  return (await request(path)).json() as Promise<T>;
}

export async function postJson<T>(path: string, body: unknown): Promise<T> {
  const response = await request(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return response.json() as Promise<T>;
}

export function twirp<T>(service: string, method: string, body: unknown = {}): Promise<T> {
  return postJson<T>(`/twirp/${service}/${method}`, body);
}
