// Drives Debian's Chromium (playwright-core) for tests/interop/test_browser.py.
//
//   node driver.mjs            reads commands from stdin, one JSON object a line:
//     {"cmd": "open", "page": "p1", "lib": "2.23.0", "query": {...}}   a fresh context and page
//     {"cmd": "eval", "page": "p1", "js": "window.sbDtmf('1#')"}       runs in that page
//     {"cmd": "close", "page": "p1"}
//   and writes what happens to stdout, one JSON object a line:
//     {"ready": {"chromium": "156...", "libs": [...]}}   once the browser runs and pages are built
//     {"page": "p1", "report": {...}}                   what the page reported (page.js)
//     {"page": "p1", "console": "..."}                  what the page logged
//     {"page": "p1", "error": "..."}                    a failed command or a page error
//
// Pages are bundled with esbuild from page.js, once per livekit-client version in package.json
// (the "livekit-client" package and every "livekit-client-<version>" alias), and served from
// 127.0.0.1 (a secure context, as getUserMedia and WebAudio worklets want). Chromium runs
// headless with a fresh profile; run this whole process inside a network namespace whose only
// link is lo (the test does) so that nothing it does can reach another machine.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const here = fileURLToPath(new URL('.', import.meta.url));
const emit = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection',
];

// livekit-client versions to bundle: {version: package name}.
function libraries() {
  const manifest = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8'));
  const libs = {};
  for (const name of Object.keys(manifest.dependencies)) {
    if (name === 'livekit-client' || name.startsWith('livekit-client-')) {
      const installed = JSON.parse(
        readFileSync(join(here, 'node_modules', name, 'package.json'), 'utf8'),
      );
      libs[installed.version] = name;
    }
  }
  return libs;
}

async function bundle(packageName) {
  const result = await esbuild.build({
    entryPoints: [join(here, 'page.js')],
    bundle: true,
    format: 'esm',
    target: 'chrome120',
    write: false,
    alias: { 'livekit-client': packageName },
    nodePaths: [join(here, 'node_modules')],
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

const INDEX = `<!doctype html><meta charset="utf-8"><title>sipbridge browser test</title>
<body><script type="module" src="page.js"></script></body>`;

async function serve(bundles) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const [, lib, file] = url.pathname.split('/');
    if (bundles[lib] && file === 'index.html') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(INDEX);
    } else if (bundles[lib] && file === 'page.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundles[lib]);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

async function main() {
  const libs = libraries();
  const bundles = {};
  for (const [version, name] of Object.entries(libs)) bundles[version] = await bundle(name);
  const http = await serve(bundles);
  const origin = `http://127.0.0.1:${http.address().port}`;
  const profile = mkdtempSync(join(tmpdir(), 'sipbridge-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    ignoreDefaultArgs: ['--mute-audio'],
  });
  const pages = new Map();
  const shutdown = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
    http.close();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  emit({ ready: { chromium: context.browser()?.version() ?? (await version(context)), libs } });

  const lines = createInterface({ input: process.stdin });
  lines.on('close', shutdown);
  for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    const id = command.page;
    try {
      if (command.cmd === 'open') {
        if (!bundles[command.lib]) throw new Error(`livekit-client ${command.lib} is not bundled`);
        const page = await context.newPage();
        pages.set(id, page);
        await page.exposeFunction('sbReport', (json) => emit({ page: id, report: JSON.parse(json) }));
        page.on('console', (message) => emit({ page: id, console: message.text(), type: message.type() }));
        page.on('pageerror', (error) => emit({ page: id, error: String(error) }));
        const query = new URLSearchParams(command.query).toString();
        await page.goto(`${origin}/${command.lib}/index.html?${query}`);
      } else if (command.cmd === 'eval') {
        await pages.get(id).evaluate(command.js);
      } else if (command.cmd === 'close') {
        await pages.get(id)?.close();
        pages.delete(id);
        emit({ page: id, closed: true });
      }
    } catch (error) {
      emit({ page: id, error: String(error?.message ?? error) });
    }
  }
}

async function version(context) {
  const page = await context.newPage();
  const agent = await page.evaluate(() => navigator.userAgent);
  await page.close();
  return agent.match(/Chrome\/([\d.]+)/)?.[1] ?? agent;
}

main().catch((error) => {
  emit({ error: String(error?.stack ?? error) });
  process.exit(1);
});
