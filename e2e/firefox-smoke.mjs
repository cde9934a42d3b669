// firefox-smoke.mjs: loads the admin page in Debian's firefox-esr through
// WebDriver BiDi (Firefox's built-in remote protocol; playwright-core can only
// drive its own patched Firefox, which we never download). It signs in, shows
// each view, checks that the page rendered data and logged no error, and
// saves a 1280x800 screenshot per view.
//
//   node --experimental-websocket firefox-smoke.mjs   (Node 20; Node 22 has WebSocket)
// Environment: BASE_URL, GATEWAY_TOKEN, SCREENSHOTS, FIREFOX (/usr/bin/firefox-esr).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.BASE_URL || 'http://127.0.0.1:18080').replace(/\/$/, '');
const TOKEN = process.env.GATEWAY_TOKEN || '';
const SHOTS = process.env.SCREENSHOTS || path.join(here, 'screenshots');
const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
const PORT = Number(process.env.FIREFOX_BIDI_PORT || 19222);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-firefox-'));
  const ff = spawn(FIREFOX, ['--headless', '--no-remote', '--profile', profile, `--remote-debugging-port=${PORT}`, '--width=1280', '--height=800', 'about:blank'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  ff.stderr.on('data', (d) => { stderr += d; });
  const errors = [];
  try {
    let ws;
    for (let i = 0; i < 100 && !ws; i++) {
      await sleep(200);
      if (!/WebDriver BiDi listening/.test(stderr)) continue;
      ws = new WebSocket(`ws://127.0.0.1:${PORT}/session`);
      await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error('BiDi connect failed')); });
    }
    if (!ws) throw new Error('firefox did not start WebDriver BiDi:\n' + stderr.slice(-2000));
    let id = 0;
    const pending = new Map();
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.id && pending.has(msg.id)) {
        const { res, rej } = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.type === 'error') rej(new Error(`${msg.error}: ${msg.message}`)); else res(msg.result);
      } else if (msg.method === 'log.entryAdded' && msg.params.level === 'error') {
        const t = msg.params.text || '';
        if (!/40[13]/.test(t)) errors.push(t); // 401 before sign-in is expected
      }
    };
    const send = (method, params = {}) => new Promise((res, rej) => {
      const n = ++id;
      pending.set(n, { res, rej });
      ws.send(JSON.stringify({ id: n, method, params }));
    });
    await send('session.new', { capabilities: {} });
    await send('session.subscribe', { events: ['log.entryAdded'] });
    const tree = await send('browsingContext.getTree', {});
    const context = tree.contexts[0].context;
    await send('browsingContext.setViewport', { context, viewport: { width: 1280, height: 800 } });
    const evaluate = async (expr) => {
      const r = await send('script.evaluate', { expression: expr, target: { context }, awaitPromise: true });
      if (r.type === 'exception') throw new Error('script: ' + JSON.stringify(r.exceptionDetails.text));
      return r.result.value;
    };
    const waitFor = async (expr, what, ms = 10000) => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if (await evaluate(`!!(${expr})`)) return;
        await sleep(200);
      }
      throw new Error(`firefox: timed out waiting for ${what}`);
    };
    const shot = async (name) => {
      const r = await send('browsingContext.captureScreenshot', { context });
      fs.writeFileSync(path.join(SHOTS, name), Buffer.from(r.data, 'base64'));
    };

    await send('browsingContext.navigate', { context, url: `${BASE}/ui/#transfers`, wait: 'complete' });
    if (TOKEN) {
      await waitFor(`!document.getElementById('signin').hidden`, 'the sign-in form');
      await evaluate(`document.getElementById('token').value = ${JSON.stringify(TOKEN)}; document.querySelector('#signin-form button').click(); true`);
    }
    await waitFor(`!document.getElementById('app').hidden`, 'the app after sign-in');
    await waitFor(`document.querySelector('#transfers-body tr [role=progressbar]')`, 'a transfer row with a progress bar');
    await shot('ff-1-transfers.png');
    console.log('firefox: transfers rows', await evaluate(`document.querySelectorAll('#transfers-body tr').length`));

    await evaluate(`document.getElementById('tab-queue').click(); true`);
    await waitFor(`document.querySelector('#peers-body tr')`, 'a peer row');
    await shot('ff-2-queue-peers.png');

    await evaluate(`document.getElementById('tab-studies').click(); document.querySelector('#study-search button[type=submit]').click(); true`);
    await waitFor(`document.querySelector('#studies-body tr')`, 'a study row');
    const pn = await evaluate(`document.querySelector('#studies-body tr td').textContent`);
    if (/object/.test(pn)) throw new Error('firefox: patient name rendered as ' + pn);
    await shot('ff-3-studies.png');

    await evaluate(`document.getElementById('tab-audit').click(); true`);
    await waitFor(`document.querySelector('#verify.ok, #verify.bad')`, 'the chain verification');
    await waitFor(`document.querySelector('#audit-body tr')`, 'an audit row');
    await shot('ff-4-audit.png');

    if (errors.length) throw new Error('firefox console errors:\n' + errors.join('\n'));
    console.log('firefox: all views rendered; screenshots ff-*.png in', SHOTS);
    await send('browser.close', {}).catch(() => {});
  } finally {
    ff.kill();
    await sleep(300);
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e.stack || e.message); process.exit(1); });
