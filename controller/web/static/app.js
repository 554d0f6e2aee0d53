// HyperSDK fleet dashboard. Plain JavaScript, no build step, nothing from the network but
// this controller's own API. Every value from the API is inserted with textContent, never
// as markup: VM names come from vCenter and are data.
'use strict';

(() => {
  const TOKEN_KEY = 'hypersdk.token';
  const REFRESH_MS = 2000;       // cluster, hosts and (without /ws) jobs
  const SLOW_REFRESH_MS = 10000; // schedules and webhooks
  const HISTORY = 60;            // rate samples kept per host (2 min at 2 s)
  const MAX_JOB_ROWS = 100;

  // The API is the parent of /ui/, so a reverse proxy may mount the controller anywhere.
  const base = new URL('..', window.location.href);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    tokenPrompted: false,
    jobs: new Map(),        // id -> job
    agents: [],
    history: new Map(),     // agent -> [bytes/s samples]
    ws: null,
    wsLive: false,
    wsBackoff: 1000,
    wsTimer: null,
    lastSlow: 0,
    unauthorized: false,
  };

  // ---------- API ----------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, opts = {}) {
    const headers = { Accept: 'application/json' };
    // Every write says JSON, even without a body: with no token configured the
    // controller refuses writes that don't (a cross-site form could send them).
    const method = opts.method || 'GET';
    if (opts.body !== undefined || method !== 'GET') headers['Content-Type'] = 'application/json';
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    let res;
    try {
      res = await fetch(new URL(path, base), {
        method, headers, cache: 'no-store',
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      });
    } catch (e) {
      throw new ApiError(0, 'controller unreachable');
    }
    if (res.status === 401 && !opts.retried && askToken()) {
      return api(path, { ...opts, retried: true });
    }
    let data = null;
    try { data = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      if (res.status === 401) setUnauthorized(true);
      throw new ApiError(res.status, (data && data.error) || res.statusText || ('HTTP ' + res.status));
    }
    if (state.unauthorized) setUnauthorized(false);
    return data;
  }

  // askToken prompts once per page load (the button asks again). The token is kept in
  // sessionStorage: it lives as long as this tab, never on disk.
  function askToken(force) {
    if (state.tokenPrompted && !force) return false;
    state.tokenPrompted = true;
    const t = window.prompt('This controller needs an API token.\nIt is kept for this browser tab only.', '');
    if (!t || !t.trim()) return false;
    state.token = t.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    updateTokenButton();
    reconnect();
    return true;
  }

  function setUnauthorized(on) {
    state.unauthorized = on;
    showBanner(on ? 'The controller refused the API token (401). Use “Sign in” to enter another one.' : '');
  }

  function showBanner(msg) {
    const b = $('#banner');
    b.textContent = msg;
    b.hidden = !msg;
  }

  function updateTokenButton() {
    $('#token-button').textContent = state.token ? 'Sign out' : 'Sign in';
  }

  // ---------- small DOM helpers ----------

  function $(sel, root) { return (root || document).querySelector(sel); }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function setText(node, text) {
    const t = text === undefined || text === null || text === '' ? '–' : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  // ---------- formatting ----------

  function bytes(n) {
    if (!n || n <= 0) return '0 B';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n >= 100 ? n.toFixed(0) : n.toFixed(1)) + ' ' + u[i];
  }

  function rate(bps) { return bps > 0 ? bytes(bps) + '/s' : ''; }

  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
    if (s < 172800) return Math.floor(s / 3600) + 'h' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm';
    return Math.floor(s / 86400) + 'd';
  }

  function ago(iso) {
    if (!iso) return '';
    const t = Date.parse(iso);
    if (isNaN(t) || t <= 0) return '';
    const d = (Date.now() - t) / 1000;
    return d < -1 ? 'in ' + duration(-d) : duration(d) + ' ago';
  }

  // ---------- jobs ----------

  const STATUS_ORDER = { running: 0, pending: 1, failed: 2, cancelled: 3, completed: 4 };

  function upsertJob(j) {
    if (!j || !j.definition || !j.definition.id) return;
    state.jobs.set(j.definition.id, j);
  }

  function sortedJobs() {
    const all = [...state.jobs.values()].sort((a, b) => {
      const s = (STATUS_ORDER[a.status] ?? 9) - (STATUS_ORDER[b.status] ?? 9);
      if (s !== 0) return s;
      return Date.parse(b.submitted_at || 0) - Date.parse(a.submitted_at || 0);
    });
    // A page left open for days sees every job go by: keep what can be shown, and the
    // running ones (their rates make the hosts' rates).
    if (all.length > 3 * MAX_JOB_ROWS) {
      for (const j of all.slice(3 * MAX_JOB_ROWS)) {
        if (j.status !== 'running') state.jobs.delete(j.definition.id);
      }
    }
    return all.slice(0, MAX_JOB_ROWS);
  }

  // A warm job's precopy rounds, the bytes of the last one, the next round, the downtime.
  function warmText(j) {
    const w = j.warm;
    if (!w) return '';
    const parts = [`${w.rounds} round${w.rounds === 1 ? '' : 's'}`];
    if (w.changed_bytes > 0) parts.push('last ' + bytes(w.changed_bytes));
    if (w.phase === 'precopy' && w.next_round_at && j.status === 'running') {
      parts.push('next in ' + duration((Date.parse(w.next_round_at) - Date.now()) / 1000));
    }
    if (w.cutover_requested && w.phase === 'precopy') parts.push('cutover requested');
    if (w.downtime_seconds > 0) parts.push('downtime ' + w.downtime_seconds.toFixed(1) + ' s');
    return 'warm · ' + parts.join(' · ');
  }

  function jobRow(id) {
    const tbody = $('#jobs-table tbody');
    let tr = tbody.querySelector(`tr[data-job-id="${CSS.escape(id)}"]`);
    if (tr) return tr;
    const fill = el('span', { class: 'fill' });
    tr = el('tr', { 'data-job-id': id },
      el('td', { class: 'vm' }, el('div', { class: 'vm-path' }), el('div', { class: 'sub job-id' }), el('div', { class: 'sub concerns', hidden: '' })),
      el('td', {}, el('span', { class: 'badge status' })),
      el('td', { class: 'stage' }, el('div', { class: 'stage-text' }), el('div', { class: 'sub warm', hidden: '' })),
      el('td', { class: 'progress-col' },
        el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100' }, fill),
        el('span', { class: 'pct' })),
      el('td', { class: 'num transferred' }),
      el('td', { class: 'num rate' }),
      el('td', { class: 'num eta' }),
      el('td', { class: 'agent' }),
      el('td', { class: 'age' }));
    tbody.append(tr);
    return tr;
  }

  // What pre-flight validation found at submit: a count per category, each concern (and
  // its fix) in the title.
  function renderConcerns(e, cs) {
    e.hidden = cs.length === 0;
    const n = (cat) => cs.filter((c) => c.category === cat).length;
    const parts = [];
    if (n('warning')) parts.push(n('warning') + (n('warning') > 1 ? ' warnings' : ' warning'));
    if (n('info')) parts.push(n('info') + ' info');
    setText(e, parts.length ? 'validation: ' + parts.join(', ') : '');
    e.className = 'sub concerns' + (n('warning') ? ' warn' : '');
    e.title = cs.map((c) => c.category + ' ' + c.id + ': ' + c.message + (c.fix ? '\nfix: ' + c.fix : '')).join('\n');
  }

  function renderJobs() {
    const jobs = sortedJobs();
    const keep = new Set(jobs.map((j) => j.definition.id));
    const tbody = $('#jobs-table tbody');
    for (const tr of [...tbody.children]) {
      if (!keep.has(tr.dataset.jobId)) tr.remove();
    }
    jobs.forEach((j, i) => {
      const tr = jobRow(j.definition.id);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
      const p = j.progress || {};
      const pct = Math.max(0, Math.min(100, Number(p.percent_complete) || 0));
      setText($('.vm-path', tr), j.definition.name || j.definition.vm_path);
      $('.vm-path', tr).title = j.definition.vm_path || '';
      setText($('.job-id', tr), j.definition.id);
      renderConcerns($('.concerns', tr), j.concerns || []);
      const badge = $('.status', tr);
      setText(badge, j.status + (j.cancel_requested && j.status === 'running' ? ' (cancelling)' : ''));
      badge.className = 'badge status st-' + j.status;
      let stage = j.status === 'pending' ? (j.pending_reason || 'queued') : (p.stage || '');
      if (j.status === 'failed' && j.error) stage = j.error;
      setText($('.stage-text', tr), stage);
      $('.stage-text', tr).title = stage;
      const warm = $('.warm', tr);
      const wt = warmText(j);
      setText(warm, wt);
      warm.title = wt;
      warm.hidden = !wt;
      const bar = $('.bar', tr);
      bar.setAttribute('aria-valuenow', pct.toFixed(1));
      bar.className = 'bar st-' + j.status;
      const w = pct.toFixed(1) + '%';
      const fill = $('.fill', tr);
      if (fill.style.width !== w) fill.style.width = w;
      setText($('.pct', tr), pct.toFixed(1) + '%');
      setText($('.transferred', tr), p.total_bytes > 0 ? bytes(p.current_bytes) + ' / ' + bytes(p.total_bytes) : '');
      const live = j.status === 'running';
      setText($('.rate', tr), live ? rate(p.bytes_per_second) : '');
      setText($('.eta', tr), live && p.eta_seconds > 0 ? duration(p.eta_seconds) : '');
      setText($('.agent', tr), j.agent);
      setText($('.age', tr), ago(j.submitted_at));
    });
    $('#jobs-empty').hidden = jobs.length > 0;
    $('#jobs-table').hidden = jobs.length === 0;
    const total = state.jobs.size;
    setText($('#jobs-summary'), total > jobs.length ? `${jobs.length} of ${total} shown` : `${total}`);
    renderHosts(); // a job's rate is part of its host's rate
  }

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; renderJobs(); });
  }

  async function pollJobs() {
    const res = await api('jobs/query', { method: 'POST', body: { all: true, limit: MAX_JOB_ROWS } });
    state.jobs = new Map();
    for (const j of res.jobs || []) upsertJob(j);
    scheduleRender();
  }

  // ---------- hosts ----------

  // hostRate is what an agent transfers now: the rate it advertises (what its copies read,
  // all jobs together, the figure its cap applies to), else the sum of its running jobs'
  // rates (an agent that advertises none, or before its next advertisement).
  function hostRate(a) {
    const adv = Number(a.capacity && a.capacity.transfer_rate_bytes_per_second) || 0;
    if (adv > 0) return adv;
    let sum = 0;
    for (const j of state.jobs.values()) {
      if (j.agent === a.name && j.status === 'running') sum += Number(j.progress && j.progress.bytes_per_second) || 0;
    }
    return sum;
  }

  function sampleRates() {
    for (const a of state.agents) {
      const h = state.history.get(a.name) || [];
      h.push(hostRate(a));
      while (h.length > HISTORY) h.shift();
      state.history.set(a.name, h);
    }
  }

  const SVG = 'http://www.w3.org/2000/svg';

  function sparkline(svg, samples) {
    const w = 160, h = 36;
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    const max = Math.max(1, ...samples);
    // Until the history is full, the samples spread over the whole width.
    const n = Math.max(2, samples.length);
    const pts = samples.map((v, i) => {
      const x = w - (samples.length - 1 - i) * (w / (n - 1));
      const y = h - 2 - (v / max) * (h - 4);
      return x.toFixed(1) + ',' + y.toFixed(1);
    });
    let line = svg.querySelector('polyline');
    let area = svg.querySelector('polygon');
    if (!line) {
      area = document.createElementNS(SVG, 'polygon');
      area.setAttribute('class', 'spark-area');
      line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('class', 'spark-line');
      svg.append(area, line);
    }
    line.setAttribute('points', pts.join(' '));
    if (pts.length > 0) {
      const first = pts[0].split(',')[0];
      area.setAttribute('points', `${first},${h} ${pts.join(' ')} ${w},${h}`);
    }
    svg.dataset.samples = String(samples.length);
  }

  function meter(label) {
    return el('div', { class: 'meter-row' },
      el('span', { class: 'meter-label', text: label }),
      el('div', { class: 'meter' }, el('span', { class: 'meter-fill' })),
      el('span', { class: 'meter-value' }));
  }

  function setMeter(row, fraction, text) {
    const f = Math.max(0, Math.min(1, fraction || 0));
    const fill = $('.meter-fill', row);
    fill.style.width = (f * 100).toFixed(1) + '%';
    fill.className = 'meter-fill' + (f > 0.9 ? ' hot' : f > 0.75 ? ' warm' : '');
    setText($('.meter-value', row), text);
  }

  function agentCard(name) {
    const box = $('#agent-cards');
    let card = box.querySelector(`.agent-card[data-agent="${CSS.escape(name)}"]`);
    if (card) return card;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('preserveAspectRatio', 'none');
    card = el('article', { class: 'agent-card', 'data-agent': name },
      el('header', {}, el('h3', { class: 'agent-name', text: name }), el('span', { class: 'badge agent-state' }),
        el('span', { class: 'badge agent-health' }), el('span', { class: 'badge agent-cordon' })),
      el('p', { class: 'problems' }),
      el('div', { class: 'facts' },
        el('div', {}, el('span', { class: 'k', text: 'CPUs' }), el('span', { class: 'v cpus' })),
        el('div', {}, el('span', { class: 'k', text: 'Jobs' }), el('span', { class: 'v jobs' })),
        el('div', {}, el('span', { class: 'k', text: 'Storage free' }), el('span', { class: 'v storage' })),
        el('div', { class: 'wide' }, el('span', { class: 'k', text: 'Guests run' }), el('span', { class: 'v virt' }))),
      meter('Memory'),
      meter('Slots'),
      meter('Cap'),
      el('div', { class: 'rate-row' },
        el('div', {}, el('span', { class: 'k', text: 'Transfer rate' }), el('span', { class: 'v host-rate' })),
        svg),
      el('footer', { class: 'sub' }, el('span', { class: 'methods' }), el('span', { class: 'seen' })));
    box.append(card);
    return card;
  }

  function renderHosts() {
    const agents = [...state.agents].sort((a, b) => a.name.localeCompare(b.name));
    const keep = new Set(agents.map((a) => a.name));
    for (const c of [...$('#agent-cards').children]) {
      if (!keep.has(c.dataset.agent)) c.remove();
    }
    let alive = 0, slots = 0, busy = 0, total = 0;
    for (const a of agents) {
      const card = agentCard(a.name);
      const c = a.capacity || {};
      const member = a.state === 'alive' || a.state === 'suspect';
      if (member) { alive++; slots += a.max_jobs || 0; busy += a.running_jobs || 0; }
      card.classList.toggle('gone', !member);
      const st = $('.agent-state', card);
      setText(st, a.state);
      st.className = 'badge agent-state ag-' + a.state;
      // The agent's self-checks and the operator's cordon: a host that takes no work
      // must not look like one that does (issue 17).
      const failed = c.failed_checks || [];
      const he = $('.agent-health', card);
      setText(he, failed.length ? 'unhealthy' : 'healthy');
      he.className = 'badge agent-health ' + (failed.length ? 'ag-unhealthy' : 'ag-healthy');
      he.hidden = !member;
      const ce = $('.agent-cordon', card);
      setText(ce, a.cordon || '');
      ce.className = 'badge agent-cordon ag-cordoned';
      ce.hidden = !a.cordon;
      const pe = $('.problems', card);
      setText(pe, (c.reasons || []).join(' · '));
      pe.hidden = !member || failed.length === 0;
      card.classList.toggle('unhealthy', member && failed.length > 0);
      card.classList.toggle('cordoned', !!a.cordon);
      setText($('.cpus', card), c.cpus);
      setText($('.jobs', card), `${a.running_jobs || 0} / ${a.max_jobs || 0}`);
      setText($('.storage', card), c.storage_total_bytes ? `${bytes(c.storage_free_bytes)} of ${bytes(c.storage_total_bytes)}` : bytes(c.storage_free_bytes));
      const used = Math.max(0, (c.memory_total_bytes || 0) - (c.memory_free_bytes || 0));
      const rows = card.querySelectorAll('.meter-row');
      setMeter(rows[0], c.memory_total_bytes ? used / c.memory_total_bytes : 0,
        `${bytes(used)} / ${bytes(c.memory_total_bytes)}`);
      setMeter(rows[1], a.max_jobs ? (a.running_jobs || 0) / a.max_jobs : 0, `${a.running_jobs || 0} of ${a.max_jobs || 0} busy`);
      const r = hostRate(a);
      total += r;
      setText($('.host-rate', card), r > 0 ? rate(r) : 'idle');
      // The agent's transfer.max_mbps: how much of it the copies use now.
      const cap = Number(c.transfer_cap_bytes_per_second) || 0;
      rows[2].classList.add('cap-row');
      setMeter(rows[2], cap ? r / cap : 0, cap ? `${rate(r) || '0 B/s'} of ${rate(cap)}` : 'no cap');
      sparkline($('svg.spark', card), state.history.get(a.name) || []);
      // How the host runs migrated guests (its probe's decision): TCG is correct but slow,
      // which an operator placing VMs wants to see at a glance; the reason is the tooltip.
      const v = a.capabilities && a.capabilities.virtualization;
      const ve = $('.virt', card);
      setText(ve, v ? (v.type === 'kvm' ? 'KVM · ' + (v.cpu || 'default') : 'TCG (slow)') : 'probing…');
      ve.classList.toggle('warn', !!v && v.type !== 'kvm');
      ve.title = v ? (v.reason || '') : 'the agent is finding out how this host runs guests';
      setText($('.methods', card), ((a.capabilities && a.capabilities.methods) || []).join(' · ') || 'no transfer method');
      setText($('.seen', card), member ? 'seen ' + ago(a.last_seen) : 'last seen ' + ago(a.last_seen));
    }
    $('#agents-empty').hidden = agents.length > 0;
    setText($('#hosts-summary'), agents.length
      ? `${alive} of ${agents.length} up · ${busy}/${slots} slots busy${total > 0 ? ' · ' + rate(total) : ''}` : '');
  }

  async function pollAgents() {
    const res = await api('agents');
    state.agents = res.agents || [];
    sampleRates();
    renderHosts();
  }

  // ---------- cluster and status ----------

  async function pollCluster() {
    const cl = await api('cluster');
    const tbody = $('#cluster-table tbody');
    tbody.replaceChildren(...(cl.nodes || []).map((n) => el('tr', { 'data-node': n.id },
      el('td', {}, n.id, n.id === cl.node_id ? el('span', { class: 'sub', text: ' (answering)' }) : null),
      el('td', {}, el('span', { class: 'badge role-' + n.state, text: n.state })),
      el('td', { text: n.voter ? 'yes' : 'no' }),
      // Reachability, last contact and lag as the leader sees them (absent: no leader).
      el('td', {}, n.health ? el('span', { class: 'badge ' + (n.health.reachable ? 'ag-alive' : 'ag-dead'), text: n.health.reachable ? 'yes' : 'no' }) : '?'),
      el('td', { class: 'contact', text: n.health ? contactText(n.health) : '–' }),
      el('td', { class: 'num lag', text: n.health ? String(n.health.replication_lag || 0) : '–' }),
      el('td', { class: 'mono', text: n.api_addr || '–' }),
      el('td', { class: 'mono', text: n.raft_addr || '–' }))));
    setText($('#cluster-summary'), cl.leader && cl.leader.id ? `leader ${cl.leader.id}` : 'no leader');
    setText($('#cluster-meta'), `commit index ${cl.commit_index} · applied index ${cl.applied_index}` +
      (cl.catching_up ? ` · this controller is catching up: ${cl.sync_reason}` : '') +
      (cl.health_from ? ` · member health from ${cl.health_from}` : ' · member health unknown: no leader answered'));
    setText($('#foot-node'), 'served by ' + cl.node_id);
  }

  function contactText(h) {
    if (!h.last_contact) return 'never';
    const s = h.last_contact_seconds || 0;
    return s < 1 ? 'now' : `${s < 60 ? s.toFixed(0) + ' s' : Math.round(s / 60) + ' min'} ago`;
  }

  function renderStatus(st) {
    const counts = {
      pending: st.pending_jobs, running: st.running_jobs, completed: st.completed_jobs,
      failed: st.failed_jobs, cancelled: st.cancelled_jobs,
    };
    for (const [k, v] of Object.entries(counts)) setText($(`[data-count="${k}"]`), v ?? 0);
  }

  async function pollStatus() { renderStatus(await api('status')); }

  // ---------- schedules and webhooks ----------

  async function pollSchedules() {
    const tbody = $('#schedules-table tbody');
    const empty = $('#schedules-empty');
    try {
      const res = await api('schedules');
      const list = res.schedules || [];
      tbody.replaceChildren(...list.map((s) => el('tr', { 'data-schedule': s.id },
        el('td', {}, el('div', { text: s.name || s.id }), el('div', { class: 'sub', text: s.job_template ? s.job_template.vm_path : '' })),
        el('td', { class: 'mono', text: s.schedule }),
        el('td', {}, el('span', { class: 'badge ' + (s.enabled ? 'st-completed' : 'st-cancelled'), text: s.enabled ? 'on' : 'off' })),
        el('td', { text: s.enabled ? ago(s.next_run) || '–' : '–' }),
        el('td', { text: ago(s.last_run) || 'never' }),
        el('td', { class: 'num', text: `${s.run_count} (${s.failed_runs || 0} failed)` }))));
      empty.hidden = list.length > 0;
      empty.textContent = 'No schedules.';
      $('#schedules-table').hidden = list.length === 0;
      setText($('#schedules-summary'), String(list.length));
    } catch (e) {
      // 503: scheduler disabled on this controller; 404: an older controller.
      tbody.replaceChildren();
      $('#schedules-table').hidden = true;
      empty.hidden = false;
      empty.textContent = e.message;
    }
  }

  async function pollWebhooks() {
    const tbody = $('#webhooks-table tbody');
    const empty = $('#webhooks-empty');
    try {
      const res = await api('webhooks');
      const list = res.webhooks || [];
      tbody.replaceChildren(...list.map((w, i) => el('tr', {},
        el('td', { class: 'num', text: String(i) }),
        el('td', { class: 'mono url', text: w.url }),
        el('td', { text: (w.events || []).join(', ') }),
        el('td', {}, el('span', { class: 'badge ' + (w.enabled ? 'st-completed' : 'st-cancelled'), text: w.enabled ? 'on' : 'off' })))));
      empty.hidden = list.length > 0;
      empty.textContent = 'No webhooks.';
      $('#webhooks-table').hidden = list.length === 0;
      setText($('#webhooks-summary'), String(list.length));
    } catch (e) {
      tbody.replaceChildren();
      $('#webhooks-table').hidden = true;
      empty.hidden = false;
      empty.textContent = e.message;
    }
  }

  // ---------- WebSocket ----------

  function setMode(mode) {
    document.body.dataset.mode = mode;
    const b = $('#conn-badge');
    const text = { websocket: 'live', polling: 'polling', offline: 'offline', connecting: 'connecting…' }[mode];
    b.textContent = text;
    b.className = 'badge conn-' + mode;
    b.title = {
      websocket: 'updates stream over the WebSocket',
      polling: 'WebSocket unavailable: polling every 2 s',
      offline: 'the controller is unreachable',
      connecting: '',
    }[mode];
  }

  function connect() {
    clearTimeout(state.wsTimer);
    const u = new URL('ws', base);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    // Browsers cannot send headers on a WebSocket handshake: the token goes in the query.
    if (state.token) u.searchParams.set('token', state.token);
    let ws;
    try { ws = new WebSocket(u); } catch (e) { scheduleReconnect(); return; }
    state.ws = ws;
    ws.onopen = () => {
      state.wsLive = true;
      state.wsBackoff = 1000;
      setMode('websocket');
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      switch (m.type) {
        case 'jobs':
          state.jobs = new Map();
          for (const j of (m.data && m.data.jobs) || []) upsertJob(j);
          scheduleRender();
          break;
        case 'job_update':
          upsertJob(m.data);
          scheduleRender();
          break;
        case 'status':
          renderStatus(m.data || {});
          break;
        case 'schedule_event':
          pollSchedules();
          break;
        default:
      }
      markUpdated();
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.wsLive = false;
      setMode('polling');
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    clearTimeout(state.wsTimer);
    state.wsTimer = setTimeout(connect, state.wsBackoff);
    state.wsBackoff = Math.min(state.wsBackoff * 2, 30000);
  }

  function reconnect() {
    if (state.ws) {
      const old = state.ws;
      state.ws = null;
      state.wsLive = false;
      old.close();
    }
    state.wsBackoff = 1000;
    connect();
  }

  // ---------- refresh loop ----------

  function markUpdated() {
    setText($('#foot-updated'), 'updated ' + new Date().toLocaleTimeString());
  }

  async function refresh() {
    // Counted for whoever watches the page (tests): how many refresh cycles ran.
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    const tasks = [pollCluster(), pollAgents()];
    if (!state.wsLive) tasks.push(pollJobs(), pollStatus());
    if (Date.now() - state.lastSlow > SLOW_REFRESH_MS) {
      state.lastSlow = Date.now();
      tasks.push(pollSchedules(), pollWebhooks());
    }
    const results = await Promise.allSettled(tasks);
    const failed = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
    if (failed.some((e) => e.status === 0)) {
      setMode('offline');
    } else {
      if (document.body.dataset.mode === 'offline' || document.body.dataset.mode === 'connecting') {
        setMode(state.wsLive ? 'websocket' : 'polling');
      }
      markUpdated();
    }
    const other = failed.find((e) => e.status !== 0 && e.status !== 401);
    if (!state.unauthorized) showBanner(other ? other.message : '');
  }

  async function loop() {
    try { await refresh(); } finally { setTimeout(loop, REFRESH_MS); }
  }

  // Relative times age even when nothing changes.
  setInterval(() => { if (state.jobs.size) scheduleRender(); }, 5000);

  $('#token-button').addEventListener('click', () => {
    if (state.token) {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      updateTokenButton();
      reconnect();
    } else {
      askToken(true);
    }
    refresh();
  });

  updateTokenButton();
  connect();
  loop();
})();
