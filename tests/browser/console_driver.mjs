// Drives Debian's Chromium (playwright-core) for tests/interop/test_console.py: the web console
// served by `sipbridge serve` at /console, used as a person would (fill, click, read).
//
//   node console_driver.mjs    reads commands from stdin, one JSON object a line, each with an id:
//     {"id": 1, "cmd": "goto", "url": "http://127.0.0.1:7880/console"}
//     {"id": 2, "cmd": "fill", "selector": "input[name=key]", "value": "devkey"}
//     {"id": 3, "cmd": "click", "selector": "button[type=submit]"}
//     {"id": 4, "cmd": "eval", "js": "document.title"}              -> its value
//     {"id": 5, "cmd": "screenshot", "path": "/tmp/x.png"}
//     {"id": 6, "cmd": "viewport", "width": 390, "height": 844}
//   and answers each on stdout, {"id": 1, "ok": value} or {"id": 1, "error": "..."}, with
//   {"ready": {...}} once Chromium runs and {"console": ...} / {"pageerror": ...} as they come.
// Chromium runs headless with a fresh profile and a fake microphone (a tone); run this inside a
// network namespace whose only link is lo (the test does).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { chromium } from 'playwright-core';

const emit = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const ARGS = [
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

async function main() {
  const profile = mkdtempSync(join(tmpdir(), 'sipbridge-console-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ARGS,
    ignoreDefaultArgs: ['--mute-audio'],
    viewport: { width: 1280, height: 720 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (message) => emit({ console: message.text(), type: message.type() }));
  page.on('pageerror', (error) => emit({ pageerror: String(error) }));
  const shutdown = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  emit({ ready: { chromium: context.browser()?.version() ?? 'unknown' } });

  const lines = createInterface({ input: process.stdin });
  lines.on('close', shutdown);
  for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    try {
      let result = null;
      switch (command.cmd) {
        case 'goto':
          await page.goto(command.url);
          break;
        case 'fill':
          await page.fill(command.selector, command.value, { timeout: 5000 });
          break;
        case 'click':
          await page.click(command.selector, { timeout: 5000 });
          break;
        case 'press':
          await page.press(command.selector, command.key, { timeout: 5000 });
          break;
        case 'eval':
          result = await page.evaluate(command.js);
          break;
        case 'screenshot':
          await page.screenshot({ path: command.path, fullPage: command.fullPage ?? true });
          break;
        case 'viewport':
          await page.setViewportSize({ width: command.width, height: command.height });
          break;
        default:
          throw new Error(`unknown command ${command.cmd}`);
      }
      emit({ id: command.id, ok: result ?? null });
    } catch (error) {
      emit({ id: command.id, error: String(error?.message ?? error) });
    }
  }
}

main().catch((error) => {
  emit({ error: String(error?.stack ?? error) });
  process.exit(1);
});
