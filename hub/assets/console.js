// The operator console (/ui/network): polls /ui/network.json every second and updates the
// page in place: the regions map, hubs (health, version, database role, replica lag), spokes
// (health, load, RTTs, last heartbeat, certificate expiry, flagged within 7 days) and
// transfers. Rows are kept by id and a cell is written only when its text changes, so an
// update of a thousand transfers touches only what moved. Every value is set as text
// (textContent), never as markup. Plain JavaScript served as it is: there is no build step.
'use strict';
(() => {
  const POLL_MS = 1000;
  const $ = (id) => document.getElementById(id);
  const updated = $('updated');
  const tables = {
    hubs: $('hubs').tBodies[0],
    spokes: $('spokes').tBodies[0],
    transfers: $('transfers').tBodies[0],
  };
  const caches = { hubs: new Map(), spokes: new Map(), transfers: new Map() };
  let mapKey = '';
  let rendered = false;

  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  function bytes(n) {
    if (n === null || n === undefined) return '?';
    let v = n;
    let i = 0;
    while (v >= 1024 && i < UNITS.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(1)) + ' ' + UNITS[i];
  }
  function ms(us) {
    return us === null || us === undefined ? '' : (us / 1000).toFixed(1) + ' ms';
  }
  function secs(s) {
    if (s === null || s === undefined) return '';
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }
  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }
  function setAttr(el, name, value) {
    if (el.getAttribute(name) !== value) el.setAttribute(name, value);
  }
  function row(cells) {
    const tr = document.createElement('tr');
    for (let i = 0; i < cells; i += 1) tr.appendChild(document.createElement('td'));
    return tr;
  }

  // Puts `items` in `tbody` in order, reusing the row of each key.
  function keyed(tbody, cache, items, key, make, update) {
    const seen = new Set();
    let prev = null;
    for (const it of items) {
      const k = key(it);
      seen.add(k);
      let tr = cache.get(k);
      if (!tr) {
        tr = make(it);
        cache.set(k, tr);
      }
      update(tr, it);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (tr !== want) tbody.insertBefore(tr, want);
      prev = tr;
    }
    for (const [k, tr] of cache) {
      if (!seen.has(k)) {
        tr.remove();
        cache.delete(k);
      }
    }
  }

  // How long until a certificate expires: days, or hours within the last day.
  function until(s) {
    if (s < 0) return 'expired';
    if (s < 86400) return 'expires in ' + Math.floor(s / 3600) + ' h';
    const d = Math.floor(s / 86400);
    return 'expires in ' + d + (d === 1 ? ' day' : ' days');
  }

  function renderHubs(hubs) {
    keyed(tables.hubs, caches.hubs, hubs, (h) => h.quic, () => row(7), (tr, h) => {
      const c = tr.cells;
      setAttr(tr, 'data-hub', h.quic);
      setText(c[0], h.api);
      setText(c[1], h.region);
      setText(c[2], h.healthy ? 'healthy' : 'not seen');
      setAttr(c[2], 'class', h.healthy ? 'ok' : 'bad');
      setText(c[3], secs(Math.round(h.seen_ms_ago / 1000)) + ' ago');
      setText(c[4], h.version || 'unknown');
      setText(c[5], h.db_role || 'unknown');
      setText(c[6], h.replica_lag_ms === null || h.replica_lag_ms === undefined ? '' : h.replica_lag_ms + ' ms');
    });
  }

  function renderSpokes(spokes) {
    keyed(tables.spokes, caches.spokes, spokes, (s) => s.id, () => row(8), (tr, s) => {
      const c = tr.cells;
      setAttr(tr, 'data-spoke', String(s.id));
      setText(c[0], s.name);
      setText(c[1], s.region);
      const health = !s.connected ? 'not connected' : s.healthy ? 'healthy' : 'unhealthy';
      setText(c[2], health);
      setAttr(c[2], 'class', s.healthy ? 'ok' : 'bad');
      setText(c[3], s.connected ? s.active_jobs + ' jobs, ' + s.free_slots + ' free, ' + bytes(s.bytes_per_sec) + '/s' : '');
      setText(c[4], ms(s.rtt_us));
      const storage = Object.entries(s.storage_rtts_us || {})
        .map(([host, us]) => host + ' ' + ms(us))
        .join(', ');
      setText(c[5], storage);
      setText(c[6], s.last_heartbeat_ms_ago === null ? s.last_seen || '' : s.last_heartbeat_ms_ago + ' ms ago');
      // The date; within 7 days also how long is left, flagged (in words, not colour alone).
      const cert = s.cert_not_after ? s.cert_not_after.slice(0, 10) : 'unknown';
      setText(c[7], s.cert_expires_soon ? cert + ' (' + until(s.cert_expires_in_s) + ')' : cert);
      setAttr(c[7], 'class', s.cert_expires_soon ? 'bad' : '');
    });
  }

  function makeTransfer(t) {
    const tr = row(7);
    const bar = document.createElement('progress');
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute('aria-label', 'Transfer ' + t.id);
    const label = document.createElement('span');
    tr.cells[3].append(bar, ' ', label);
    return tr;
  }

  function renderTransfers(transfers) {
    keyed(tables.transfers, caches.transfers, transfers, (t) => t.id, makeTransfer, (tr, t) => {
      const c = tr.cells;
      setAttr(tr, 'data-transfer', String(t.id));
      setAttr(tr, 'data-state', t.state);
      setText(c[0], String(t.id));
      setText(c[1], t.operation);
      setText(c[2], t.state);
      const bar = c[3].firstChild;
      const total = t.bytes_total === null ? 0 : t.bytes_total;
      if (total > 0) {
        if (bar.max !== total) bar.max = total;
        if (bar.value !== t.bytes_done) bar.value = t.bytes_done;
      } else if (bar.hasAttribute('value') && t.state !== 'done') {
        bar.removeAttribute('value');
      } else if (t.state === 'done' && bar.value !== bar.max) {
        bar.value = bar.max;
      }
      setText(c[3].lastChild, bytes(t.bytes_done) + ' of ' + bytes(t.bytes_total));
      setText(c[4], t.rate ? bytes(t.rate) + '/s' : '');
      setText(c[5], t.eta === null ? '' : secs(t.eta));
      const who = t.executor === 'spoke' ? 'spoke ' + t.spoke : t.executor || '';
      setText(c[6], who + (t.relayed ? ' (relayed)' : ''));
    });
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // Regions on an ellipse, joined by the round trips spokes measured to hubs.
  function renderMap(d) {
    const regions = [...new Set([d.region, ...d.hubs.map((h) => h.region), ...d.spokes.map((s) => s.region)])].sort();
    const links = d.links.map((l) => [l.from, l.to, l.rtt_ms.toFixed(1)]);
    const key = JSON.stringify([regions, links]);
    if (key === mapKey) return;
    mapKey = key;
    const map = $('map');
    map.replaceChildren();
    const at = new Map();
    regions.forEach((r, i) => {
      const a = (2 * Math.PI * i) / Math.max(regions.length, 1) - Math.PI / 2;
      at.set(r, [300 + 220 * Math.cos(a) * (regions.length > 1 ? 1 : 0), 130 + 90 * Math.sin(a) * (regions.length > 1 ? 1 : 0)]);
    });
    for (const [from, to, rtt] of links) {
      const p = at.get(from);
      const q = at.get(to);
      if (!p || !q) continue;
      if (from !== to) map.append(svg('line', { x1: p[0], y1: p[1], x2: q[0], y2: q[1], class: 'link' }));
      const [mx, my] = from === to ? [p[0], p[1] + 30] : [(p[0] + q[0]) / 2, (p[1] + q[1]) / 2];
      map.append(svg('text', { x: mx, y: my, class: 'rtt', 'text-anchor': 'middle' }, rtt + ' ms'));
    }
    for (const r of regions) {
      const [x, y] = at.get(r);
      map.append(svg('circle', { cx: x, cy: y, r: 18, class: r === d.region ? 'region here' : 'region' }));
      map.append(svg('text', { x, y: y - 24, 'text-anchor': 'middle', class: 'name' }, r));
    }
  }

  function render(d) {
    renderMap(d);
    renderHubs(d.hubs);
    renderSpokes(d.spokes);
    renderTransfers(d.transfers);
  }

  async function tick() {
    try {
      const r = await fetch('/ui/network.json', { cache: 'no-store', credentials: 'same-origin' });
      if (r.status === 401) {
        location.assign('/ui/login');
        return;
      }
      const d = await r.json();
      const t0 = performance.now();
      render(d);
      performance.measure('console-update', { start: t0, end: performance.now() });
      if (!rendered) {
        rendered = true;
        performance.mark('console-first-render');
      }
      setText(updated, 'Updated ' + new Date().toLocaleTimeString() + ': ' + d.hubs.length + ' hubs, ' + d.spokes.length + ' spokes, ' + d.transfers.length + ' transfers.');
    } catch (e) {
      setText(updated, 'Not updated: ' + e.message);
    } finally {
      setTimeout(tick, POLL_MS);
    }
  }
  tick();
})();
