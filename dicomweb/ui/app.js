// Admin page of the DICOM gateway: plain JavaScript, no build step, no
// external resources. Every figure comes from the authenticated APIs
// (/api/v1, /dicomweb); this file only renders them. Data is always inserted
// as text (textContent), never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'dicom-gateway-token';
  const POLL_MS = 2000;
  const PEERS_POLL_MS = 10000;
  const AUDIT_PAGE = 1000;
  const AUDIT_MAX_PAGES = 5;

  const STATES = {
    queued: { icon: '◷', label: 'queued' },
    running: { icon: '▶', label: 'running' },
    completed: { icon: '✔', label: 'completed' },
    failed: { icon: '✖', label: 'failed' },
    cancelled: { icon: '⊘', label: 'cancelled' },
  };
  const VIEWS = ['transfers', 'queue', 'studies', 'audit'];

  const $ = (id) => document.getElementById(id);

  // h builds an element: attributes (class, text, on*, dataset via data-*,
  // anything else as attribute or property) and children (nodes or strings).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k in el && typeof v !== 'string') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // ---- formatting ---------------------------------------------------------

  function fmtBytes(n) {
    if (typeof n !== 'number' || !isFinite(n)) return '—';
    const u = ['B', 'kB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + u[i];
  }
  function fmtRate(bps) {
    if (typeof bps !== 'number' || !isFinite(bps)) return '—';
    return fmtBytes(bps) + '/s';
  }
  function pad(n) { return String(n).padStart(2, '0'); }
  function parseTime(s) {
    if (!s) return null;
    const d = new Date(s);
    if (isNaN(d) || d.getFullYear() < 1971) return null; // Go's zero time
    return d;
  }
  function fmtTime(s) {
    const d = parseTime(s);
    if (!d) return '—';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtAgo(s) {
    const d = parseTime(s);
    if (!d) return '—';
    let sec = Math.round((Date.now() - d.getTime()) / 1000);
    const future = sec < 0;
    sec = Math.abs(sec);
    let t;
    if (sec < 5) return 'just now';
    if (sec < 60) t = `${sec} s`;
    else if (sec < 3600) t = `${Math.floor(sec / 60)} min`;
    else if (sec < 86400) t = `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min`;
    else t = `${Math.floor(sec / 86400)} d`;
    return future ? `in ${t}` : `${t} ago`;
  }
  function timeEl(s) {
    const d = parseTime(s);
    if (!d) return h('span', { class: 'muted', text: '—' });
    return h('time', { datetime: d.toISOString(), title: fmtTime(s), text: fmtAgo(s) });
  }
  function uidEl(uid) {
    if (!uid) return h('span', { class: 'muted', text: '—' });
    return h('span', { class: 'uid', title: uid, text: uid });
  }
  function stateBadge(state) {
    const st = STATES[state] || { icon: '?', label: state || 'unknown' };
    return h('span', { class: `state state-${STATES[state] ? state : 'unknown'}` },
      h('span', { class: 'icon', 'aria-hidden': 'true', text: st.icon }), st.label);
  }

  // ---- API ----------------------------------------------------------------

  class AuthError extends Error {}
  class APIError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let signedIn = false;

  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (!headers.has('Accept')) headers.set('Accept', 'application/json');
    if (token) headers.set('Authorization', 'Bearer ' + token);
    let body = opts.body;
    if (body !== undefined && typeof body !== 'string') {
      body = JSON.stringify(body);
      headers.set('Content-Type', 'application/json');
    }
    let res;
    try {
      res = await fetch(path, { method: opts.method || 'GET', headers, body, cache: 'no-store', credentials: 'same-origin' });
    } catch (e) {
      setConn(false, 'gateway unreachable');
      throw new APIError(0, 'gateway unreachable: ' + e.message);
    }
    setConn(true);
    if (res.status === 401) {
      showSignin(token ? 'The token was not accepted. Sign in again.' : '');
      throw new AuthError('sign-in required');
    }
    const ctype = res.headers.get('Content-Type') || '';
    let data = null;
    if (res.status !== 204) {
      const text = await res.text();
      if (text && /json/.test(ctype)) {
        try { data = JSON.parse(text); } catch { data = null; }
      } else if (text) {
        data = { error: text.slice(0, 300) };
      }
    }
    if (!res.ok) {
      let msg = (data && (data.error || data.message)) || res.statusText || 'request failed';
      if (res.status === 403) msg = 'needs admin role' + (data && data.error ? ` (${data.error})` : '');
      if (res.status === 501) msg = 'not implemented yet on this gateway';
      throw new APIError(res.status, msg);
    }
    return data;
  }

  function listOf(data, key) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data[key])) return data[key];
    if (data && Array.isArray(data.items)) return data.items;
    return [];
  }

  function setConn(ok, msg) {
    const el = $('conn');
    el.classList.toggle('bad', !ok);
    if (!ok) el.textContent = msg || 'connection lost';
    else if (signedIn) el.textContent = token ? 'Signed in with token' : 'No auth configured (loopback only)';
  }

  function flash(msg, bad, link) {
    const el = $('flash');
    el.replaceChildren(msg);
    if (link) el.append(' ', h('a', { href: link.href, text: link.text }));
    el.classList.toggle('bad', !!bad);
    el.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { el.hidden = true; }, 15000);
  }

  // ---- sign-in --------------------------------------------------------------

  function showSignin(msg) {
    signedIn = false;
    stopPolling();
    if (token) { token = ''; sessionStorage.removeItem(TOKEN_KEY); }
    $('app').hidden = true;
    $('signout').hidden = true;
    $('signin').hidden = false;
    $('signin-msg').textContent = msg || '';
    $('conn').textContent = 'Not signed in';
    $('token').focus();
  }

  async function start() {
    try {
      // Probe with a cheap authenticated call: a 401 shows the sign-in form.
      await api('/api/v1/peers').catch((e) => {
        if (e instanceof AuthError) throw e;
        return api('/api/v1/transfers'); // peers not served: probe transfers instead
      });
    } catch (e) {
      if (e instanceof AuthError) return;
      // Any other answer (404, 501) still means we got past authentication.
    }
    signedIn = true;
    $('signin').hidden = true;
    $('app').hidden = false;
    $('signout').hidden = !token;
    setConn(true);
    showView(viewFromHash(), false);
    refreshPeers();
    startPolling();
  }

  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    $('token').value = '';
    $('signin-msg').textContent = '';
    start();
  });
  $('signout').addEventListener('click', () => {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    showSignin('Signed out.');
  });

  // ---- tabs -----------------------------------------------------------------

  const tabs = [...document.querySelectorAll('[role=tab]')];
  let currentView = '';

  function viewFromHash() {
    const v = location.hash.replace(/^#/, '');
    return VIEWS.includes(v) ? v : 'transfers';
  }

  function showView(view, focusTab) {
    currentView = view;
    for (const t of tabs) {
      const on = t.dataset.view === view;
      t.setAttribute('aria-selected', on ? 'true' : 'false');
      t.tabIndex = on ? 0 : -1;
      if (on && focusTab) t.focus();
    }
    for (const v of VIEWS) $('view-' + v).hidden = v !== view;
    if (location.hash !== '#' + view) history.replaceState(null, '', '#' + view);
    document.title = `${$('tab-' + view).firstChild.textContent.trim()} — DICOM gateway`;
    if (view === 'queue') refreshPeers();
    if (view === 'audit') enterAudit();
    if (view === 'transfers' || view === 'queue') renderTransfers();
  }

  for (const t of tabs) {
    t.addEventListener('click', () => { $('flash').hidden = true; showView(t.dataset.view, false); });
    t.addEventListener('keydown', (ev) => {
      const i = tabs.indexOf(t);
      let j = -1;
      if (ev.key === 'ArrowRight') j = (i + 1) % tabs.length;
      else if (ev.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
      else if (ev.key === 'Home') j = 0;
      else if (ev.key === 'End') j = tabs.length - 1;
      if (j >= 0) { ev.preventDefault(); $('flash').hidden = true; showView(tabs[j].dataset.view, true); }
    });
  }
  document.addEventListener('visibilitychange', () => { if (!document.hidden && polling) refreshTransfers(); });
  window.addEventListener('hashchange', () => { if (signedIn) showView(viewFromHash(), false); });

  // ---- transfers ------------------------------------------------------------

  let transfers = [];          // the last list the API returned
  let transfersError = '';
  let lastPoll = null;
  const samples = new Map();   // id -> {t, bytes, rate}: rate from successive polls
  const rowMsgs = new Map();   // id -> message shown under the row's buttons
  let pollTimer = null;
  let peersTimer = null;
  let polling = false;

  function startPolling() {
    stopPolling();
    polling = true;
    const tick = async () => {
      if (!polling) return;
      if (!document.hidden) await refreshTransfers(); // no load from a background tab
      if (polling) pollTimer = setTimeout(tick, POLL_MS);
    };
    tick();
    peersTimer = setInterval(() => { if (currentView === 'queue') refreshPeers(); }, PEERS_POLL_MS);
  }
  function stopPolling() {
    polling = false;
    clearTimeout(pollTimer);
    clearInterval(peersTimer);
  }

  async function refreshTransfers() {
    const q = new URLSearchParams();
    const dir = $('f-direction').value;
    if (dir) q.set('direction', dir);
    try {
      const qs = q.toString();
      const data = await api('/api/v1/transfers' + (qs ? '?' + qs : ''));
      transfers = listOf(data, 'transfers');
      transfersError = '';
      lastPoll = new Date();
      updateRates();
    } catch (e) {
      if (e instanceof AuthError) return;
      transfersError = e.message;
    }
    renderTransfers();
  }

  function updateRates() {
    const now = performance.now();
    const seen = new Set();
    for (const t of transfers) {
      seen.add(t.id);
      const bytes = Number(t.bytes_sent) || 0;
      const prev = samples.get(t.id);
      let rate = null;
      if (t.state === 'running' && prev) {
        const dt = (now - prev.t) / 1000;
        if (dt > 0.2) {
          const inst = Math.max(0, bytes - prev.bytes) / dt;
          rate = prev.rate == null ? inst : 0.5 * inst + 0.5 * prev.rate;
        } else {
          rate = prev.rate;
        }
      }
      samples.set(t.id, { t: now, bytes, rate });
    }
    for (const id of samples.keys()) if (!seen.has(id)) samples.delete(id);
  }

  function rateOf(t) {
    if (t.state === 'running') {
      const s = samples.get(t.id);
      return s && s.rate != null ? fmtRate(s.rate) : 'measuring…';
    }
    if (t.state === 'completed') {
      const a = parseTime(t.created_at), b = parseTime(t.completed_at);
      if (a && b && b > a && t.bytes_sent) return 'avg ' + fmtRate(t.bytes_sent / ((b - a) / 1000));
    }
    return '—';
  }

  function filteredTransfers() {
    const st = $('f-state').value, dest = $('f-destination').value, study = $('f-study').value.trim();
    return transfers.filter((t) =>
      (!st || t.state === st) && (!dest || t.destination === dest) && (!study || (t.study_uid || '').includes(study)));
  }

  function progressCell(t) {
    const total = Number(t.instances_total) || 0, sent = Number(t.instances_sent) || 0;
    let frac = total > 0 ? sent / total : (t.state === 'completed' ? 1 : 0);
    frac = Math.max(0, Math.min(1, frac));
    const pct = Math.round(frac * 100);
    const fill = h('div', { class: 'fill' });
    fill.style.width = pct + '%'; // CSSOM: allowed by the style-src 'self' policy
    const bar = h('div', {
      class: 'bar ' + (t.state || ''), role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100',
      'aria-valuenow': String(pct), 'aria-label': `Transfer progress ${pct}%`,
    }, fill);
    const failed = Number(t.instances_failed) || 0;
    const txt = `${pct}% · ${sent}/${total || '?'} instances · ${fmtBytes(Number(t.bytes_sent) || 0)}` + (failed ? ` · ${failed} refused` : '');
    return h('div', { class: 'progress' }, bar, h('span', { class: 'ptext', text: txt }));
  }

  function actionsCell(t) {
    const wrap = h('div', { class: 'actions' });
    const canRetry = t.state === 'failed' || t.state === 'cancelled';
    const canCancel = t.state === 'queued' || t.state === 'running';
    const short = (t.study_uid || t.id || '').slice(-12);
    if (canRetry) wrap.append(h('button', { type: 'button', 'data-act': 'retry', 'aria-label': `Retry transfer of …${short} to ${t.destination}`, text: '↻ Retry', onclick: () => act(t, 'retry') }));
    if (canCancel) wrap.append(h('button', { type: 'button', class: 'danger', 'data-act': 'cancel', 'aria-label': `Cancel transfer of …${short} to ${t.destination}`, text: '✕ Cancel', onclick: () => act(t, 'cancel') }));
    const cell = h('td', {}, wrap);
    const m = rowMsgs.get(t.id);
    if (m) cell.append(h('span', { class: 'rowmsg', role: 'alert', text: m }));
    return cell;
  }

  async function act(t, what) {
    if (what === 'cancel' && !confirm(`Cancel the transfer of study ${t.study_uid} to ${t.destination}?`)) return;
    rowMsgs.delete(t.id);
    try {
      await api(`/api/v1/transfers/${encodeURIComponent(t.id)}/${what}`, { method: 'POST' });
      flash(`Transfer ${t.id}: ${what === 'retry' ? 'retry requested' : 'cancel requested'}.`);
    } catch (e) {
      if (e instanceof AuthError) return;
      rowMsgs.set(t.id, e.status === 403 ? 'needs admin role' : `${what} failed: ${e.message}`);
    }
    await refreshTransfers();
  }

  function rowSignature(t) {
    return JSON.stringify([t.state, t.destination, t.study_uid, t.priority, t.instances_total, t.instances_sent,
      t.bytes_sent, t.attempts, t.last_error, t.updated_at, t.verified, t.verification, t.next_attempt_at,
      t.instances_failed, rateOf(t), rowMsgs.get(t.id) || '']);
  }

  function buildRow(t) {
    const stateCell = h('td', { class: 'nowrap' }, stateBadge(t.state));
    if (t.priority === 'urgent') stateCell.append(h('span', { class: 'prio-urgent', title: 'urgent priority', text: '⚑ urgent' }));
    if (t.verified === true || t.verified === false) {
      stateCell.append(h('div', { class: 'verified ' + (t.verified ? 'yes' : 'no'), title: t.verification || '' },
        t.verified ? '✔ verified at destination' : '✖ verification failed'));
    }
    const attempts = h('td', { class: 'num', text: String(t.attempts ?? 0) });
    if (t.next_attempt_at && (t.state === 'queued' || t.state === 'running') && parseTime(t.next_attempt_at) > new Date()) {
      attempts.append(h('div', { class: 'detail', title: fmtTime(t.next_attempt_at) }, 'next ', timeEl(t.next_attempt_at)));
    }
    const incoming = t.direction === 'incoming';
    return h('tr', { 'data-id': t.id, 'data-state': t.state },
      stateCell,
      h('td', { text: incoming ? `from ${t.source || '?'}` : (t.destination || '—') }),
      h('td', {}, uidEl(t.study_uid)),
      h('td', {}, progressCell(t)),
      h('td', { class: 'nowrap', text: rateOf(t) }),
      attempts,
      h('td', { class: 'nowrap' }, timeEl(t.updated_at || t.created_at)),
      h('td', { class: 'err', text: t.last_error || '' }),
      actionsCell(t));
  }

  // renderTransfers updates the table in place, keyed by transfer ID, so
  // that polling does not move keyboard focus or scroll position.
  function renderTransfers() {
    renderSummary();
    renderDestinations();
    renderQueue();
    if (currentView === 'queue') renderPeers();
    const body = $('transfers-body');
    const list = filteredTransfers().slice().sort((a, b) => {
      const rank = { running: 0, queued: 1, failed: 2, cancelled: 3, completed: 4 };
      const r = (rank[a.state] ?? 5) - (rank[b.state] ?? 5);
      if (r) return r;
      return String(b.updated_at || b.created_at || '').localeCompare(String(a.updated_at || a.created_at || ''));
    });
    const existing = new Map([...body.children].map((tr) => [tr.dataset.id, tr]));
    const active = document.activeElement;
    let prev = null;
    for (const t of list) {
      let tr = existing.get(t.id);
      const sig = rowSignature(t);
      if (tr && tr.dataset.sig !== sig) {
        const fresh = buildRow(t);
        // Keep the focused button focused across the update.
        const focusedAct = tr.contains(active) && active.dataset ? active.dataset.act : null;
        tr.replaceWith(fresh);
        tr = fresh;
        if (focusedAct) {
          const b = tr.querySelector(`[data-act="${focusedAct}"]`);
          if (b) b.focus();
        }
      } else if (!tr) {
        tr = buildRow(t);
      }
      tr.dataset.sig = sig;
      existing.delete(t.id);
      if (prev ? prev.nextSibling !== tr : body.firstChild !== tr) {
        if (prev) prev.after(tr); else body.prepend(tr);
      }
      prev = tr;
    }
    for (const tr of existing.values()) tr.remove();
    $('transfers-empty').hidden = list.length > 0;
    $('transfers-empty').textContent = transfersError ? `Transfers unavailable: ${transfersError}` : (transfers.length ? 'No transfers match the filters.' : 'No transfers yet. Send a study from the Studies view.');
    $('transfers-updated').textContent = transfersError ? `⚠ ${transfersError}` : (lastPoll ? `Live · updated ${lastPoll.toLocaleTimeString()} (every 2 s)` : '');
    const activeCount = transfers.filter((t) => t.state === 'running' || t.state === 'queued').length;
    $('tab-count-active').textContent = activeCount ? String(activeCount) : '';
    $('tab-count-active').title = activeCount ? `${activeCount} queued or running` : '';
  }

  function renderSummary() {
    const counts = {};
    for (const t of transfers) counts[t.state] = (counts[t.state] || 0) + 1;
    const sel = $('f-state').value;
    const box = $('transfer-summary');
    box.replaceChildren(...Object.keys(STATES).map((st) => {
      const b = h('button', {
        type: 'button', class: `state state-${st}`, 'aria-pressed': sel === st ? 'true' : 'false',
        title: `Show only ${st} transfers`,
        onclick: () => { $('f-state').value = sel === st ? '' : st; renderTransfers(); },
      }, h('span', { class: 'icon', 'aria-hidden': 'true', text: STATES[st].icon }), `${counts[st] || 0} ${st}`);
      return b;
    }));
  }

  let peers = [];
  let peersError = '';

  function renderDestinations() {
    const sel = $('f-destination');
    const names = new Set(peers.map((p) => p.name).filter(Boolean));
    for (const t of transfers) if (t.destination) names.add(t.destination);
    const want = ['', ...[...names].sort()];
    const have = [...sel.options].map((o) => o.value);
    if (want.join('\n') === have.join('\n')) return;
    const cur = sel.value;
    sel.replaceChildren(...want.map((n) => h('option', { value: n, text: n || 'all' })));
    sel.value = want.includes(cur) ? cur : '';
  }

  for (const id of ['f-state', 'f-destination']) $(id).addEventListener('change', renderTransfers);
  $('f-study').addEventListener('input', renderTransfers);
  $('f-direction').addEventListener('change', () => { transfers = []; samples.clear(); refreshTransfers(); });
  $('transfer-filters').addEventListener('submit', (ev) => ev.preventDefault());

  // ---- queue and peers ------------------------------------------------------

  function renderQueue() {
    const q = transfers.filter((t) => t.state === 'queued');
    const running = transfers.filter((t) => t.state === 'running');
    const failed = transfers.filter((t) => t.state === 'failed');
    const card = (n, label, extra) => h('div', { class: 'card' + (extra ? ' ' + extra : '') },
      h('div', { class: 'big', text: String(n) }), h('div', { class: 'label', text: label }));
    $('queue-cards').replaceChildren(
      card(q.filter((t) => t.priority === 'urgent').length, '⚑ urgent queued'),
      card(q.filter((t) => t.priority !== 'urgent').length, '◷ normal queued'),
      card(running.length, '▶ running'),
      card(failed.length, '✖ failed (need action)'));
    const groups = new Map();
    for (const t of [...q, ...running]) {
      const key = `${t.destination || '—'}\u0000${t.priority || 'normal'}`;
      const g = groups.get(key) || { dest: t.destination || '—', prio: t.priority || 'normal', queued: 0, running: 0, oldest: null };
      if (t.state === 'queued') {
        g.queued++;
        const c = parseTime(t.created_at);
        if (c && (!g.oldest || c < g.oldest)) g.oldest = c;
      } else g.running++;
      groups.set(key, g);
    }
    const rows = [...groups.values()].sort((a, b) => a.dest.localeCompare(b.dest) || (a.prio === 'urgent' ? -1 : 1));
    $('queue-body').replaceChildren(...(rows.length ? rows.map((g) => h('tr', {},
      h('td', { text: g.dest }),
      h('td', { text: g.prio === 'urgent' ? '⚑ urgent' : g.prio }),
      h('td', { class: 'num', text: String(g.queued) }),
      h('td', { class: 'num', text: String(g.running) }),
      h('td', {}, g.oldest ? timeEl(g.oldest.toISOString()) : h('span', { class: 'muted', text: '—' })))) :
      [h('tr', {}, h('td', { colspan: '5', class: 'empty', text: 'Nothing queued or running.' }))]));
  }

  async function refreshPeers() {
    try {
      const data = await api('/api/v1/peers');
      peers = listOf(data, 'peers');
      peersError = '';
    } catch (e) {
      if (e instanceof AuthError) return;
      peersError = e.message;
    }
    renderPeers();
    renderDestinations();
    renderSendTo();
  }

  const PEER_ORDER = ['name', 'url', 'reachable', 'healthy', 'last_success', 'last_error', 'last_error_at', 'last_checked'];

  function peerValue(key, v) {
    if (v === undefined || v === null || v === '') return h('span', { class: 'muted', text: '—' });
    if (typeof v === 'boolean') {
      if (key === 'reachable' || key === 'healthy' || key === 'up') {
        return h('span', { class: 'health ' + (v ? 'up' : 'down') },
          h('span', { 'aria-hidden': 'true', text: v ? '●' : '✖' }), v ? 'reachable' : 'unreachable');
      }
      return document.createTextNode(v ? 'yes' : 'no');
    }
    if (typeof v === 'string' && /(_at|_success|_seen|_checked|time)$/.test(key) && parseTime(v)) return timeEl(v);
    if (key === 'last_error' || key === 'last_transfer_error') return h('span', { class: 'err', text: String(v) });
    if ((key === 'max_parallel' || key === 'max_request_bytes') && v === 0) return h('span', { class: 'muted', text: 'default' });
    if (key === 'max_request_bytes' && typeof v === 'number') return document.createTextNode(fmtBytes(v));
    if (v instanceof Node) return v;
    if (typeof v === 'object') {
      const set = Object.entries(v).filter(([, x]) => x !== false && x !== '' && x !== null && x !== 0);
      if (!set.length) return h('span', { class: 'muted', text: '—' });
      return h('span', { class: 'detail', text: set.map(([k, x]) => (x === true ? k : `${k}=${x}`)).join(' · ') });
    }
    return document.createTextNode(String(v));
  }

  // peerHealthFromTransfers fills what GET /api/v1/peers does not report
  // from this gateway's own transfers: the last one completed and the last
  // error, per destination.
  function peerHealthFromTransfers(p) {
    const mine = transfers.filter((t) => t.destination === p.name);
    const out = {};
    if (!('last_success' in p)) {
      const done = mine.filter((t) => t.state === 'completed').map((t) => parseTime(t.completed_at || t.updated_at)).filter(Boolean);
      const last = done.length ? new Date(Math.max(...done)) : null;
      out.last_transfer_completed = last ? timeEl(last.toISOString()) : null;
    }
    if (!('last_error' in p)) {
      const errs = mine.filter((t) => t.last_error).sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at)));
      out.last_transfer_error = errs.length ? errs[0].last_error : null;
    }
    out.active_transfers = mine.filter((t) => t.state === 'queued' || t.state === 'running').length;
    return out;
  }

  function renderPeers() {
    $('peers-msg').textContent = peersError ? `Peers unavailable: ${peersError}` : (peers.length ? '' : 'No peers configured (peers: in the --config YAML).');
    const rows = peers.map((p) => ({ ...p, ...peerHealthFromTransfers(p) }));
    const keys = [];
    const order = [...PEER_ORDER, 'last_transfer_completed', 'last_transfer_error', 'active_transfers'];
    for (const k of order) if (rows.some((p) => k in p)) keys.push(k);
    for (const p of rows) for (const k of Object.keys(p)) if (!keys.includes(k)) keys.push(k);
    const label = (k) => k.replace(/_/g, ' ');
    $('peers-head').replaceChildren(...keys.map((k) => h('th', { scope: 'col', text: label(k) })));
    $('peers-body').replaceChildren(...rows.map((p) => h('tr', {}, ...keys.map((k) => h('td', {}, peerValue(k, p[k]))))));
  }

  // ---- studies --------------------------------------------------------------

  const TAG = {
    StudyInstanceUID: '0020000D', PatientName: '00100010', PatientID: '00100020', StudyDate: '00080020',
    StudyTime: '00080030', StudyDescription: '00081030', ModalitiesInStudy: '00080061', AccessionNumber: '00080050',
    NumberOfStudyRelatedSeries: '00201206', NumberOfStudyRelatedInstances: '00201208',
    IdentityConflict: '00091001', // the gateway's flag: the study holds more than one patient identity
  };
  function dcmValues(ds, tag) {
    const el = ds && ds[tag];
    return el && Array.isArray(el.Value) ? el.Value : [];
  }
  function dcmString(ds, tag) {
    const v = dcmValues(ds, tag)[0];
    return v === undefined || v === null ? '' : String(v);
  }
  // PN values in DICOM JSON are objects: {"Alphabetic": "DOE^JANE"}.
  function dcmPN(ds, tag) {
    const v = dcmValues(ds, tag)[0];
    if (!v) return '';
    const s = typeof v === 'string' ? v : (v.Alphabetic || v.Ideographic || v.Phonetic || '');
    const [family, given, middle, prefix, suffix] = s.split('^');
    const rest = [prefix, given, middle, suffix].filter(Boolean).join(' ');
    return family && rest ? `${family}, ${rest}` : (family || rest || '');
  }
  function dcmDate(s) {
    return /^\d{8}$/.test(s) ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}` : s;
  }

  let studies = [];

  function renderSendTo() {
    for (const wrap of document.querySelectorAll('.sendto')) {
      const sel = wrap.querySelector('select.dest');
      const cur = sel.value;
      const names = peers.map((p) => p.name).filter(Boolean);
      sel.replaceChildren(...(names.length ? names.map((n) => h('option', { value: n, text: n })) : [h('option', { value: '', text: 'no peers' })]));
      if (names.includes(cur)) sel.value = cur;
      wrap.querySelector('button').disabled = !names.length;
    }
  }

  function sendToCell(uid) {
    const dest = h('select', { class: 'dest', 'aria-label': `Destination for study ${uid}` });
    const prio = h('select', { class: 'prio', 'aria-label': `Priority for study ${uid}` },
      h('option', { value: 'normal', text: 'normal' }), h('option', { value: 'urgent', text: 'urgent' }));
    const btn = h('button', {
      type: 'button', class: 'primary', text: 'Send', 'aria-label': `Send study ${uid}`,
      onclick: async () => {
        if (!dest.value) return;
        btn.disabled = true;
        try {
          const t = await api('/api/v1/transfers', { method: 'POST', body: { study_uid: uid, destination: dest.value, priority: prio.value } });
          flash(`Transfer ${t && t.id ? t.id + ' ' : ''}of study …${uid.slice(-16)} to ${dest.value} is ${t && t.state ? t.state : 'queued'}.`, false, { href: '#transfers', text: 'Show transfers' });
          refreshTransfers();
        } catch (e) {
          if (!(e instanceof AuthError)) flash(`Could not send the study to ${dest.value}: ${e.status === 403 ? 'needs transfer role' : e.message}`, true);
        } finally {
          btn.disabled = false;
        }
      },
    });
    const cell = h('td', {}, h('div', { class: 'sendto' }, dest, prio, btn));
    return cell;
  }

  async function searchStudies() {
    const f = new FormData($('study-search'));
    const q = new URLSearchParams();
    let name = String(f.get('PatientName') || '').trim();
    if (name) {
      if (!/[*?]/.test(name)) name += '*'; // prefix match unless the admin wrote a wildcard
      q.set('PatientName', name);
    }
    const pid = String(f.get('PatientID') || '').trim();
    if (pid) q.set('PatientID', pid);
    const from = String(f.get('from') || '').replace(/-/g, ''), to = String(f.get('to') || '').replace(/-/g, '');
    if (from || to) q.set('StudyDate', from === to ? from : `${from}-${to}`);
    const mod = String(f.get('ModalitiesInStudy') || '').trim().toUpperCase();
    if (mod) q.set('ModalitiesInStudy', mod);
    for (const t of [TAG.StudyDescription, TAG.ModalitiesInStudy, TAG.NumberOfStudyRelatedSeries, TAG.NumberOfStudyRelatedInstances]) q.append('includefield', t);
    q.set('limit', '200');
    $('studies-msg').textContent = 'Searching…';
    try {
      const data = await api('/dicomweb/studies?' + q, { headers: { Accept: 'application/dicom+json' } });
      studies = Array.isArray(data) ? data : [];
      $('studies-msg').textContent = studies.length ? `${studies.length} stud${studies.length === 1 ? 'y' : 'ies'} found.` : 'No studies match.';
    } catch (e) {
      if (e instanceof AuthError) return;
      studies = [];
      $('studies-msg').textContent = `Search failed: ${e.status === 403 ? 'needs read role' : e.message}`;
    }
    renderStudies();
  }

  // patientIDCell shows the Patient ID and, for a study the gateway flagged
  // (instances of another patient identity arrived for it), the other one.
  function patientIDCell(ds) {
    const cell = h('td', { text: dcmString(ds, TAG.PatientID) || '—' });
    const flag = dcmValues(ds, TAG.IdentityConflict);
    if (flag[0] === 'IDENTITY CONFLICT') {
      const others = [];
      for (let i = 1; i < flag.length; i += 2) others.push([flag[i], flag[i + 1]].filter(Boolean).join(' / '));
      const other = others.filter(Boolean).join(', ');
      cell.append(' ', h('span', { class: 'state state-failed identity-conflict', title: 'Instances of another patient identity were stored under this study; check before use.',
        text: `identity conflict${other ? ': also ' + other : ''}` }));
    }
    return cell;
  }

  function renderStudies() {
    $('studies-body').replaceChildren(...studies.map((ds) => {
      const uid = dcmString(ds, TAG.StudyInstanceUID);
      const series = dcmString(ds, TAG.NumberOfStudyRelatedSeries), inst = dcmString(ds, TAG.NumberOfStudyRelatedInstances);
      return h('tr', { 'data-study-uid': uid },
        h('td', { text: dcmPN(ds, TAG.PatientName) || '—' }),
        patientIDCell(ds),
        h('td', { class: 'nowrap', text: dcmDate(dcmString(ds, TAG.StudyDate)) || '—' }),
        h('td', { text: dcmString(ds, TAG.StudyDescription) }),
        h('td', { text: dcmValues(ds, TAG.ModalitiesInStudy).join(', ') || '—' }),
        h('td', { class: 'num', text: series || '—' }),
        h('td', { class: 'num', text: inst || '—' }),
        h('td', {}, uidEl(uid)),
        sendToCell(uid));
    }));
    renderSendTo();
  }

  $('study-search').addEventListener('submit', (ev) => { ev.preventDefault(); searchStudies(); });

  // ---- audit ----------------------------------------------------------------

  let auditEvents = [];
  let auditNext = '';
  let auditQuery = null;
  let auditEntered = false;

  function enterAudit() {
    if (auditEntered) return;
    auditEntered = true;
    // Recent events: the log is read oldest first, so start a day back.
    const since = $('audit-filters').elements.since;
    if (!since.value) {
      const d = new Date(Date.now() - 24 * 3600 * 1000);
      since.value = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    }
    loadAudit(false);
    verifyAudit();
  }

  function auditParams() {
    const f = new FormData($('audit-filters'));
    const q = new URLSearchParams();
    for (const k of ['study_uid', 'patient_id', 'actor', 'action']) {
      const v = String(f.get(k) || '').trim();
      if (v) q.set(k, v);
    }
    for (const k of ['since', 'until']) {
      const v = String(f.get(k) || '');
      if (v) { const d = new Date(v); if (!isNaN(d)) q.set(k, d.toISOString()); }
    }
    q.set('limit', String(AUDIT_PAGE));
    return q;
  }

  async function loadAudit(more) {
    if (!more) { auditQuery = auditParams(); auditEvents = []; auditNext = ''; }
    $('audit-msg').textContent = 'Loading…';
    try {
      for (let i = 0; i < AUDIT_MAX_PAGES; i++) {
        const q = new URLSearchParams(auditQuery);
        if (auditNext) q.set('next', auditNext);
        const data = await api('/api/v1/audit?' + q);
        auditEvents.push(...listOf(data, 'events'));
        auditNext = (data && data.next) || '';
        if (!auditNext) break;
      }
      $('audit-msg').textContent = `${auditEvents.length} event${auditEvents.length === 1 ? '' : 's'}, newest first` +
        (auditNext ? ' — more match: narrow the time range or load more.' : '.');
    } catch (e) {
      if (e instanceof AuthError) return;
      $('audit-msg').textContent = `Audit unavailable: ${e.message}`;
    }
    $('audit-more').hidden = !auditNext;
    renderAudit();
  }

  function detailText(d) {
    if (!d || typeof d !== 'object') return d ? String(d) : '';
    return Object.entries(d).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ');
  }

  const OUTCOME_ICON = { success: '✔', failure: '✖', error: '‼' };

  function renderAudit() {
    const hideUsed = $('audit-hide-used').checked;
    const hidden = hideUsed ? auditEvents.filter((ev) => ev.action === 'audit.used').length : 0;
    $('audit-hidden').textContent = hidden ? `(${hidden} hidden)` : '';
    const list = auditEvents.filter((ev) => !hideUsed || ev.action !== 'audit.used').sort((a, b) =>
      (Number(b.seq) || 0) - (Number(a.seq) || 0) || String(b.time).localeCompare(String(a.time)));
    $('audit-body').replaceChildren(...list.map((ev) => {
      const actor = ev.actor || {};
      const who = typeof actor === 'string' ? actor : actor.name || '—';
      const sub = typeof actor === 'object' ? [actor.roles && actor.roles.join(','), actor.address].filter(Boolean).join(' · ') : '';
      return h('tr', { 'data-action': ev.action || '' },
        h('td', { class: 'nowrap', title: ev.id ? `record ${ev.id}` : null, text: fmtTime(ev.time) }),
        h('td', {}, who, sub ? h('div', { class: 'detail', text: sub }) : null),
        h('td', { class: 'nowrap mono', text: ev.action || '' }),
        h('td', { class: `nowrap outcome-${ev.outcome}` }, h('span', { 'aria-hidden': 'true', text: (OUTCOME_ICON[ev.outcome] || '•') + ' ' }), ev.outcome || ''),
        h('td', {}, ...(ev.study_uids || []).map((u) => h('div', {}, uidEl(u)))),
        h('td', { text: (ev.patient_ids || []).join(', ') }),
        h('td', { class: 'detail', text: detailText(ev.detail) }));
    }));
  }

  async function verifyAudit() {
    const box = $('verify');
    box.className = 'verify';
    box.textContent = 'Verifying the audit chain…';
    try {
      const r = await api('/api/v1/audit/verify');
      const at = new Date().toLocaleTimeString();
      if (r && r.ok) {
        box.className = 'verify ok';
        box.replaceChildren(h('span', { 'aria-hidden': 'true', text: '✔ ' }), 'Audit chain intact',
          h('span', { class: 'sub', text: `${r.records} records verified at ${at}` }));
      } else {
        box.className = 'verify bad';
        box.replaceChildren(h('span', { 'aria-hidden': 'true', text: '✖ ' }), `Audit chain BROKEN at record ${r && r.first_broken}`,
          h('span', { class: 'sub', text: `${(r && r.reason) || ''} (${r && r.records} records read, checked ${at})` }));
      }
    } catch (e) {
      if (e instanceof AuthError) return;
      box.className = 'verify bad';
      box.textContent = `⚠ Chain verification unavailable: ${e.message}`;
    }
  }

  $('audit-filters').addEventListener('submit', (ev) => { ev.preventDefault(); loadAudit(false); });
  $('audit-more').addEventListener('click', () => loadAudit(true));
  $('audit-hide-used').addEventListener('change', renderAudit);
  $('verify-btn').addEventListener('click', verifyAudit);

  // ---- start ----------------------------------------------------------------

  // Relative times ("12 s ago") age between polls too.
  setInterval(() => {
    for (const el of document.querySelectorAll('time[datetime]')) el.textContent = fmtAgo(el.getAttribute('datetime'));
  }, 5000);

  fetch('/healthz', { cache: 'no-store' }).then((r) => r.json()).then((j) => {
    if (j && j.name) { $('gw-name').textContent = j.name; document.documentElement.dataset.gateway = j.name; }
  }).catch(() => {});
  start();
})();
