// fixture-server.mjs: a stand-in for the gateway's APIs, to develop and
// screenshot the admin page while the real transfer and audit APIs are being
// built. It serves ../dicomweb/ui/ and answers /api/v1 and QIDO-RS with
// made-up data that follows the DESIGN.md contracts. Not used by the real
// end-to-end run (run.sh without --fixture).
//
//   node fixture-server.mjs [port]     FIXTURE_TOKEN=secret requires a bearer token
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const uiDir = path.join(here, '..', 'dicomweb', 'ui');
const port = Number(process.argv[2] || 18090);
const token = process.env.FIXTURE_TOKEN || '';
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml' };

const STUDY = '1.2.826.0.1.3680043.8.498.10442051925138475301937466720498813';
const studies = [
  { uid: STUDY, name: 'HAMPSHIRE^ALICE', pid: 'HMP-0001', date: '20250314', desc: 'CT CHEST WITH CONTRAST', mods: ['CT'], series: 2, inst: 6 },
  { uid: '1.2.826.0.1.3680043.8.498.2222', name: 'SURREY^BOB^J', pid: 'SRY-0042', date: '20250402', desc: 'MR BRAIN', mods: ['MR', 'SR'], series: 3, inst: 180 },
];
const t0 = Date.now();
const iso = (ms) => new Date(ms).toISOString();
let nextID = 1;
const transfers = [
  { id: 't-0001', study_uid: '1.2.826.0.1.3680043.8.498.2222', destination: 'wales-cardiff', priority: 'normal', state: 'failed', instances_total: 180, instances_sent: 97, bytes_sent: 52_400_000, attempts: 5, last_error: 'peer wales-cardiff unreachable: connection refused (gave up after 5 attempts)', created_at: iso(t0 - 3600e3), updated_at: iso(t0 - 1800e3), completed_at: null },
  { id: 't-0002', study_uid: '1.2.826.0.1.3680043.8.498.3333', destination: 'surrey', priority: 'urgent', state: 'queued', instances_total: 0, instances_sent: 0, bytes_sent: 0, attempts: 0, last_error: '', created_at: iso(t0 - 60e3), updated_at: iso(t0 - 60e3), completed_at: null },
  { id: 't-0003', study_uid: '1.2.826.0.1.3680043.8.498.4444', destination: 'surrey', priority: 'normal', state: 'completed', instances_total: 42, instances_sent: 42, bytes_sent: 22_020_096, attempts: 1, last_error: '', created_at: iso(t0 - 7200e3), updated_at: iso(t0 - 7100e3), completed_at: iso(t0 - 7100e3) },
];
const live = new Map(); // id -> start ms for simulated progress
const audit = [];
function record(action, extra = {}) {
  audit.push({ id: String(audit.length + 1).padStart(16, '0'), seq: audit.length + 1, time: iso(Date.now()), gateway: 'hampshire', actor: { name: 'admin', roles: ['admin'], address: '127.0.0.1', method: 'token' }, action, outcome: 'success', ...extra });
}
record('store', { study_uids: [STUDY], patient_ids: ['HMP-0001'], detail: { instances: 6 } });
record('query', { detail: { level: 'studies', results: 2 } });

function tick() {
  for (const [id, start] of live) {
    const t = transfers.find((x) => x.id === id);
    if (t.state === 'cancelled') { live.delete(id); continue; }
    const el = (Date.now() - start) / 1000;
    if (el < 1.5) continue;
    if (t.state === 'queued') { t.state = 'running'; t.attempts = 1; record('transfer.started', { study_uids: [t.study_uid], patient_ids: ['HMP-0001'], detail: { transfer_id: id, destination: t.destination } }); }
    t.instances_total = 6;
    t.instances_sent = Math.min(6, Math.floor((el - 1.5) / 1.2));
    t.bytes_sent = t.instances_sent * 524_288;
    t.updated_at = iso(Date.now());
    if (t.instances_sent === 6) {
      t.state = 'completed'; t.completed_at = t.updated_at; live.delete(id);
      record('transfer.completed', { study_uids: [t.study_uid], patient_ids: ['HMP-0001'], detail: { transfer_id: id, destination: t.destination, instances: 6 } });
      record('transfer.verified', { study_uids: [t.study_uid], patient_ids: ['HMP-0001'], detail: { transfer_id: id, sha256_checked: 6 } });
    }
  }
}
setInterval(tick, 250);

function dcm(s) {
  return {
    '00080020': { vr: 'DA', Value: [s.date] }, '00080061': { vr: 'CS', Value: s.mods }, '00081030': { vr: 'LO', Value: [s.desc] },
    '00100010': { vr: 'PN', Value: [{ Alphabetic: s.name }] }, '00100020': { vr: 'LO', Value: [s.pid] },
    '0020000D': { vr: 'UI', Value: [s.uid] }, '00201206': { vr: 'IS', Value: [s.series] }, '00201208': { vr: 'IS', Value: [s.inst] },
  };
}

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

http.createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  const p = u.pathname;
  if (p === '/ui') { res.writeHead(301, { Location: '/ui/' }); return res.end(); }
  if (p.startsWith('/ui/')) {
    const name = path.normalize(p.slice(4) || 'index.html').replace(/^(\.\.[/\\])+/, '');
    const f = path.join(uiDir, name || 'index.html');
    if (!f.startsWith(uiDir) || !fs.existsSync(f) || fs.statSync(f).isDirectory()) return send(res, 404, { error: 'no such resource' });
    res.writeHead(200, { 'Content-Type': types[path.extname(f)] || 'application/octet-stream', 'Content-Security-Policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'" });
    return res.end(fs.readFileSync(f));
  }
  if (p === '/healthz') return send(res, 200, { status: 'ok', name: 'hampshire' });
  if (token && req.headers.authorization !== 'Bearer ' + token) return send(res, 401, { error: 'no bearer token' });
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    if (p === '/api/v1/peers') return send(res, 200, [
      { name: 'surrey', url: 'http://127.0.0.1:18081/dicomweb', reachable: true, last_success: iso(Date.now() - 4000), last_error: '' },
      { name: 'wales-cardiff', url: 'https://pacs.cardiff.example.nhs.uk/dicomweb', reachable: false, last_success: iso(t0 - 86400e3), last_error: 'dial tcp: connection refused' },
    ]);
    if (p === '/api/v1/transfers' && req.method === 'GET') return send(res, 200, transfers);
    if (p === '/api/v1/transfers' && req.method === 'POST') {
      const j = JSON.parse(body || '{}');
      const t = { id: `t-${String(100 + nextID++)}`, study_uid: j.study_uid, destination: j.destination, priority: j.priority || 'normal', state: 'queued', instances_total: 0, instances_sent: 0, bytes_sent: 0, attempts: 0, last_error: '', created_at: iso(Date.now()), updated_at: iso(Date.now()), completed_at: null };
      transfers.push(t); live.set(t.id, Date.now());
      record('transfer.created', { study_uids: [t.study_uid], patient_ids: ['HMP-0001'], detail: { transfer_id: t.id, destination: t.destination, priority: t.priority } });
      return send(res, 202, t);
    }
    const m = p.match(/^\/api\/v1\/transfers\/([^/]+)\/(retry|cancel)$/);
    if (m && req.method === 'POST') {
      const t = transfers.find((x) => x.id === m[1]);
      if (!t) return send(res, 404, { error: 'no such transfer' });
      if (m[2] === 'retry' && t.id === 't-0001') return send(res, 403, { error: '/api/v1/transfers/:id/retry needs role admin' });
      if (m[2] === 'cancel') { t.state = 'cancelled'; record('transfer.cancelled', { study_uids: [t.study_uid], detail: { transfer_id: t.id } }); }
      else { t.state = 'queued'; live.set(t.id, Date.now()); record('transfer.retried', { study_uids: [t.study_uid], detail: { transfer_id: t.id } }); }
      t.updated_at = iso(Date.now());
      return send(res, 200, t);
    }
    if (p === '/api/v1/audit') {
      const f = Object.fromEntries(u.searchParams);
      const ev = audit.filter((e) => (!f.action || e.action === f.action) && (!f.study_uid || (e.study_uids || []).includes(f.study_uid)) && (!f.actor || e.actor.name === f.actor));
      return send(res, 200, { events: ev });
    }
    if (p === '/api/v1/audit/verify') return send(res, 200, { ok: true, records: audit.length });
    if (p === '/dicomweb/studies') {
      const name = (u.searchParams.get('PatientName') || '').replace(/\*$/, '').toUpperCase();
      const list = studies.filter((s) => s.name.startsWith(name));
      if (!list.length) { res.writeHead(204); return res.end(); }
      return send(res, 200, list.map(dcm), 'application/dicom+json');
    }
    send(res, 404, { error: 'no such resource' });
  });
}).listen(port, '127.0.0.1', () => console.log(`fixture on http://127.0.0.1:${port}/ui/`));
