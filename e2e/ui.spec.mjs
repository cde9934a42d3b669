// ui.spec.mjs: end-to-end browser test of the admin page (/ui/), run by
// run.sh against a real gateway pair (hampshire → surrey). Debian's chromium
// is driven by playwright-core; no browser is ever downloaded.
//
// Environment:
//   BASE_URL      the gateway under test (default http://127.0.0.1:18080)
//   GATEWAY_TOKEN bearer token when the gateway has auth configured: the test
//                 then also checks the sign-in form
//   STUDY_DIR     DICOM files to STOW if the gateway has no study yet
//   PEER          destination peer name (default surrey)
//   SCREENSHOTS   directory for the 1280x800 screenshots (default ./screenshots)
//   FIXTURE=1     run against fixture-server.mjs instead of a real gateway
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.BASE_URL || 'http://127.0.0.1:18080').replace(/\/$/, '');
const TOKEN = process.env.GATEWAY_TOKEN || '';
const PEER = process.env.PEER || 'surrey';
const SHOTS = process.env.SCREENSHOTS || path.join(here, 'screenshots');
const STUDY_DIR = process.env.STUDY_DIR || path.join(here, '..', 'testdata', 'studies', 'study1');
const TRANSFER_TIMEOUT = Number(process.env.TRANSFER_TIMEOUT_MS || 120000);

function log(...a) { console.log(`[e2e ${new Date().toISOString().slice(11, 19)}]`, ...a); }
const authHeaders = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};

// step names each stage so a failure says exactly which one broke.
async function step(name, fn) {
  log('▶', name);
  try {
    const r = await fn();
    log('✔', name);
    return r;
  } catch (e) {
    log('✖', name, '—', e.message.split('\n')[0]);
    e.message = `step "${name}" failed: ${e.message}`;
    throw e;
  }
}

async function qidoStudies() {
  const res = await fetch(`${BASE}/dicomweb/studies?includefield=00081030`, { headers: { Accept: 'application/dicom+json', ...authHeaders } });
  if (res.status === 204) return [];
  if (!res.ok) throw new Error(`QIDO GET /dicomweb/studies: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

// stowStudy POSTs every file of dir as one multipart/related STOW-RS request.
async function stowStudy(dir) {
  const boundary = 'e2e-' + Math.random().toString(16).slice(2);
  const parts = [];
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.dcm')).sort()) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`));
    parts.push(fs.readFileSync(path.join(dir, f)));
    parts.push(Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  const res = await fetch(`${BASE}/dicomweb/studies`, {
    method: 'POST',
    headers: { 'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}`, Accept: 'application/dicom+json', ...authHeaders },
    body: Buffer.concat(parts),
  });
  if (res.status !== 200 && res.status !== 202) throw new Error(`STOW POST /dicomweb/studies: HTTP ${res.status} ${(await res.text()).slice(0, 300)}`);
}

const pn = (ds) => {
  const v = ds['00100010'] && ds['00100010'].Value && ds['00100010'].Value[0];
  return (v && (v.Alphabetic || v)) || '';
};
const uidOf = (ds) => ds['0020000D'].Value[0];

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });

  const study = await step('a study is stored at the gateway (QIDO finds it; STOW from node if not)', async () => {
    let list = await qidoStudies();
    if (!list.length && !process.env.FIXTURE) {
      log('  no study yet: STOW', STUDY_DIR);
      await stowStudy(STUDY_DIR);
      list = await qidoStudies();
    }
    assert.ok(list.length > 0, 'QIDO returns no study');
    return list[0];
  });
  const studyUID = uidOf(study);
  const family = pn(study).split('^')[0];
  log(`  study ${studyUID}, patient family name "${family}"`);

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-chromium-'));
  // A fresh profile every run (playwright passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  });
  const page = context.pages()[0] || await context.newPage();
  const problems = [];
  // 401s and 403s are expected: the probe before sign-in, the wrong token,
  // the refused retry of the fixture.
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 40[13]/.test(m.text())) problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.setDefaultTimeout(15000);

  try {
    await step('the page loads from /ui (redirect to /ui/)', async () => {
      const res = await page.goto(`${BASE}/ui`);
      assert.equal(new URL(page.url()).pathname, '/ui/');
      assert.match(res.headers()['content-security-policy'] || '', /default-src 'self'/);
    });

    if (TOKEN) {
      await step('sign-in form is shown without a token; a wrong token is refused; the right one signs in', async () => {
        await page.locator('#signin').waitFor({ state: 'visible' });
        await page.screenshot({ path: path.join(SHOTS, '0-signin.png') });
        await page.fill('#token', 'wrong-token');
        await page.press('#token', 'Enter');
        await page.locator('#signin-msg', { hasText: 'not accepted' }).waitFor();
        await page.fill('#token', TOKEN);
        await page.click('#signin button[type=submit]');
        await page.locator('#app').waitFor({ state: 'visible' });
      });
    } else {
      await page.locator('#app').waitFor({ state: 'visible' });
    }

    await step('Studies view: search by patient name finds the study', async () => {
      await page.getByRole('tab', { name: 'Studies' }).click();
      await page.fill('#q-name', family);
      await page.press('#q-name', 'Enter');
      await page.locator(`#studies-body tr[data-study-uid="${studyUID}"]`).waitFor();
      const row = page.locator(`#studies-body tr[data-study-uid="${studyUID}"]`);
      const text = await row.innerText();
      assert.ok(!text.includes('[object Object]'), `PN rendered as object: ${text}`);
      await page.screenshot({ path: path.join(SHOTS, '1-studies.png') });
    });

    await step(`Studies view: send the study to ${PEER}`, async () => {
      const row = page.locator(`#studies-body tr[data-study-uid="${studyUID}"]`);
      const options = await row.locator('select.dest option').evaluateAll((os) => os.map((o) => o.value));
      if (!options.includes(PEER)) {
        throw new Error(`the Send to… list offers [${options.join(', ')}], not ${PEER}: GET /api/v1/peers does not list it`);
      }
      await row.locator('select.dest').selectOption(PEER);
      await row.getByRole('button', { name: /Send study/ }).click();
      await page.locator('#flash', { hasText: `to ${PEER}` }).waitFor();
      const flashText = await page.locator('#flash').innerText();
      assert.ok(!/Could not send/.test(flashText), flashText);
    });

    let transferID = '';
    await step('Transfers view: the progress bar reaches completed', async () => {
      await page.locator('#flash a', { hasText: 'Show transfers' }).click();
      await page.locator('#view-transfers').waitFor({ state: 'visible' });
      const row = page.locator(`#transfers-body tr:has(.uid[title="${studyUID}"])`).filter({ hasText: PEER }).first();
      await row.waitFor();
      transferID = await row.getAttribute('data-id');
      const seen = new Set();
      const deadline = Date.now() + TRANSFER_TIMEOUT;
      let shotRunning = false;
      for (;;) {
        const r = page.locator(`#transfers-body tr[data-id="${transferID}"]`);
        const state = await r.getAttribute('data-state');
        const pct = await r.locator('[role=progressbar]').getAttribute('aria-valuenow');
        const key = `${state} ${pct}%`;
        if (!seen.has(key)) { seen.add(key); log(`  transfer ${transferID}: ${key}`); }
        if (state === 'running' && !shotRunning) {
          shotRunning = true;
          await page.screenshot({ path: path.join(SHOTS, '2a-transfers-running.png') });
        }
        if (state === 'completed') {
          assert.equal(pct, '100');
          break;
        }
        if (state === 'failed' || state === 'cancelled') {
          throw new Error(`transfer ${transferID} ended ${state}: ${await r.locator('td.err').innerText()}`);
        }
        if (Date.now() > deadline) throw new Error(`transfer ${transferID} still ${key} after ${TRANSFER_TIMEOUT} ms`);
        await page.waitForTimeout(250); // the page itself polls every 2 s
      }
      await page.screenshot({ path: path.join(SHOTS, '2-transfers.png') });
    });

    if (process.env.FIXTURE) {
      await step('Retry answered 403 shows "needs admin role" (fixture only)', async () => {
        const r = page.locator('#transfers-body tr[data-id="t-0001"]');
        await r.getByRole('button', { name: /Retry/ }).click();
        await r.locator('.rowmsg', { hasText: 'needs admin role' }).waitFor();
      });
    }

    await step('Queue and peers view lists the peer', async () => {
      await page.getByRole('tab', { name: 'Queue and peers' }).click();
      await page.locator('#peers-body tr', { hasText: PEER }).first().waitFor();
      await page.screenshot({ path: path.join(SHOTS, '3-queue-peers.png') });
    });

    await step('Audit view shows the transfer events and the chain verification', async () => {
      // Keyboard: the tabs follow the ARIA tabs pattern (arrow keys move).
      await page.getByRole('tab', { name: 'Queue and peers' }).focus();
      await page.keyboard.press('ArrowRight');
      await page.keyboard.press('ArrowRight');
      await page.locator('#view-audit').waitFor({ state: 'visible' });
      await page.locator('#verify.ok, #verify.bad').waitFor();
      const verify = await page.locator('#verify').innerText();
      assert.match(verify, /intact/, verify);
      const deadline = Date.now() + 20000;
      for (;;) {
        const n = await page.locator('#audit-body tr[data-action^="transfer."]', { hasText: studyUID.slice(0, 20) }).count();
        if (n > 0) break;
        if (Date.now() > deadline) throw new Error('no transfer.* audit event for the study');
        await page.waitForTimeout(1000);
        await page.click('#audit-filters button[type=submit]');
      }
      const actions = await page.locator('#audit-body tr[data-action^="transfer."]').evaluateAll((rows) => rows.map((r) => r.dataset.action));
      log('  audit transfer actions:', [...new Set(actions)].join(', '));
      assert.ok(actions.includes('transfer.created') || actions.includes('transfer.completed'), actions.join(','));
      await page.screenshot({ path: path.join(SHOTS, '4-audit.png') });
    });

    await step('Audit filter by action narrows the list', async () => {
      await page.fill('#audit-filters input[name=action]', 'transfer.completed');
      await page.press('#audit-filters input[name=action]', 'Enter');
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('#audit-body tr')];
        return rows.length > 0 && rows.every((r) => r.dataset.action === 'transfer.completed');
      });
    });

    assert.deepEqual(problems, [], 'browser console errors');
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  log('all steps passed; screenshots in', SHOTS);
}

main().catch((e) => {
  console.error(e.stack || e.message);
  process.exit(1);
});
