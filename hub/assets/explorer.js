// The portal's file explorer: one account's files through the public REST API only (the same
// calls any app makes), with a short-lived bearer token of that account that the portal gives
// this page (kept in memory, asked for again when it expires). Browse folders page by page,
// upload with a progress bar (large files as an upload session, in parts), download through a
// short-lived direct link, rename, move (a modal dialog browsing the account's folders through
// the same API, then `PATCH {"parent_id"}`), delete, search, create folders. Every name is set
// as text, never as markup. Plain JavaScript served as it is: there is no build step.
'use strict';
(() => {
  const root = document.getElementById('explorer');
  const app = root.dataset.app;
  const account = root.dataset.account;
  const csrf = root.dataset.csrf;
  const api = '/v1/accounts/' + account;
  const $ = (id) => document.getElementById(id);
  const body = $('files').tBodies[0];
  const status = $('status');
  const PAGE = 100;
  // Files at or above this size go up as an upload session, in parts.
  const SESSION_FROM = 32 * 1024 * 1024;
  let token = null;
  let folder = { id: 'root', name: 'root' };
  let trail = [];
  let nextPage = null;

  async function fetchToken() {
    const r = await fetch('/ui/apps/' + app + '/accounts/' + account + '/token', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: 'csrf=' + encodeURIComponent(csrf),
    });
    if (!r.ok) throw new Error('signing in to the account failed (' + r.status + ')');
    token = (await r.json()).access_token;
  }

  // A call to the public API; a 401 gets a fresh token once.
  async function call(method, path, init = {}, again = true) {
    if (!token) await fetchToken();
    const headers = Object.assign({ Authorization: 'Bearer ' + token }, init.headers || {});
    const r = await fetch(path, Object.assign({}, init, { method, headers }));
    if (r.status === 401 && again) {
      token = null;
      return call(method, path, init, false);
    }
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try {
        msg = (await r.json()).message || msg;
      } catch (_) {
        // not JSON
      }
      throw new Error(msg);
    }
    return r.status === 204 ? null : r.json();
  }

  function say(text) {
    status.textContent = text;
  }
  function cell(tr, text) {
    const td = document.createElement('td');
    if (text !== undefined) td.textContent = text;
    tr.appendChild(td);
    return td;
  }
  function button(label, onClick) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.addEventListener('click', onClick);
    return b;
  }
  function size(n) {
    if (n === null || n === undefined) return '';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < u.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i ? v.toFixed(1) : String(v)) + ' ' + u[i];
  }

  function crumbs() {
    const nav = $('crumbs');
    nav.replaceChildren();
    [...trail, folder].forEach((f, i, all) => {
      if (i > 0) nav.append(' / ');
      if (i === all.length - 1) {
        const s = document.createElement('strong');
        s.textContent = f.name;
        nav.append(s);
      } else {
        nav.append(button(f.name, () => {
          trail = trail.slice(0, i);
          open(f);
        }));
      }
    });
  }

  function row(o) {
    const tr = document.createElement('tr');
    tr.dataset.id = o.id;
    tr.dataset.name = o.name;
    const name = cell(tr);
    if (o.type === 'folder') {
      name.append(button(o.name + '/', () => {
        trail.push(folder);
        open({ id: o.id, name: o.name });
      }));
    } else {
      name.textContent = o.name;
    }
    cell(tr, o.type === 'file' ? size(o.size) : '');
    cell(tr, o.modified || '');
    const actions = cell(tr);
    if (o.type === 'file') actions.append(button('Download', () => download(o, tr)));
    actions.append(button('Rename', () => renameForm(o, tr, actions)));
    const mv = button('Move', () => chooser.start(o, tr, mv));
    actions.append(mv);
    const del = button('Delete', async () => {
      if (del.dataset.armed !== '1') {
        del.dataset.armed = '1';
        del.textContent = 'Confirm delete';
        return;
      }
      try {
        await call('DELETE', api + '/storage/' + (o.type === 'file' ? 'files/' : 'folders/') + encodeURIComponent(o.id) + (o.type === 'folder' ? '?recursive=true' : ''));
        tr.remove();
        say('Deleted ' + o.name + '.');
      } catch (e) {
        say('Not deleted: ' + e.message);
      }
    });
    del.className = 'danger';
    actions.append(del);
    return tr;
  }

  function renameForm(o, tr, actions) {
    const form = document.createElement('form');
    form.className = 'rename';
    const input = document.createElement('input');
    input.value = o.name;
    input.setAttribute('aria-label', 'New name for ' + o.name);
    const ok = document.createElement('button');
    ok.type = 'submit';
    ok.textContent = 'Save';
    form.append(input, ok);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const kind = o.type === 'file' ? 'files/' : 'folders/';
        const changed = await call('PATCH', api + '/storage/' + kind + encodeURIComponent(o.id), {
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ name: input.value }),
        });
        tr.replaceWith(row(changed));
        say('Renamed to ' + changed.name + '.');
      } catch (e) {
        say('Not renamed: ' + e.message);
      }
    });
    actions.append(form);
    input.focus();
  }

  async function download(o, tr) {
    try {
      const expiration = new Date(Date.now() + 10 * 60 * 1000).toISOString();
      const link = await call('POST', api + '/storage/links', {
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ file_id: o.id, direct: true, expiration }),
      });
      const a = document.createElement('a');
      a.href = link.url;
      a.download = o.name;
      a.className = 'download-link';
      a.textContent = 'link';
      tr.cells[3].append(a);
      a.click();
    } catch (e) {
      say('Not downloaded: ' + e.message);
    }
  }

  // The move dialog: a folder chooser over the same API (folders only, page by page, starting
  // at the folder shown), then one PATCH with the chosen `parent_id`. A folder being moved is
  // not offered as its own destination; the folder an item already sits in cannot be chosen.
  const chooser = (() => {
    const dlg = $('move');
    const list = $('move-folders');
    const more = $('move-more');
    const here = $('move-here');
    const note = $('move-status');
    let item = null; // { o, tr, opener }
    let at = null;
    let path = [];
    let next = null;
    let seq = 0;

    function place() {
      const nav = $('move-crumbs');
      nav.replaceChildren();
      [...path, at].forEach((f, i, all) => {
        if (i > 0) nav.append(' / ');
        if (i === all.length - 1) {
          const s = document.createElement('strong');
          s.textContent = f.name;
          nav.append(s);
        } else {
          const b = button(f.name, () => {
            path = path.slice(0, i);
            browse(f);
          });
          b.className = 'link';
          nav.append(b);
        }
      });
      const already = item.o.parent && item.o.parent.id === at.id;
      here.textContent = 'Move into ' + at.name;
      here.disabled = already;
    }

    async function browse(f, page = 1) {
      at = f;
      const mine = ++seq;
      place();
      if (page === 1) list.replaceChildren();
      note.textContent = 'Listing ' + f.name + '…';
      try {
        const l = await call('GET', api + '/storage/folders/' + encodeURIComponent(f.id) + '/contents?page_size=' + PAGE + '&page=' + page);
        if (mine !== seq) return;
        for (const x of l.objects) {
          if (x.type !== 'folder' || x.id === item.o.id) continue;
          const li = document.createElement('li');
          li.dataset.name = x.name;
          const b = button(x.name + '/', () => {
            path.push(at);
            browse({ id: x.id, name: x.name });
          });
          b.className = 'link';
          li.append(b);
          list.append(li);
        }
        next = l.next_page;
        more.hidden = !next;
        note.textContent = list.children.length ? '' : 'No folders in ' + f.name + '.';
        if (item.o.parent && item.o.parent.id === f.id) note.textContent += (note.textContent ? ' ' : '') + item.o.name + ' is already here.';
      } catch (e) {
        if (mine === seq) note.textContent = 'Not listed: ' + e.message;
      }
    }

    function start(o, tr, opener) {
      item = { o, tr, opener };
      $('move-title').textContent = 'Move ' + o.name;
      path = [...trail];
      dlg.showModal();
      browse(folder);
    }

    here.addEventListener('click', async () => {
      const { o, tr } = item;
      const to = at;
      here.disabled = true;
      note.textContent = 'Moving ' + o.name + '…';
      try {
        const kind = o.type === 'file' ? 'files/' : 'folders/';
        const moved = await call('PATCH', api + '/storage/' + kind + encodeURIComponent(o.id), {
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ parent_id: to.id }),
        });
        dlg.close();
        if (to.id === folder.id) tr.replaceWith(row(moved));
        else tr.remove();
        say('Moved ' + o.name + ' into ' + to.name + '.');
      } catch (e) {
        here.disabled = false;
        note.textContent = 'Not moved: ' + e.message;
      }
    });
    more.addEventListener('click', () => browse(at, next));
    $('move-cancel').addEventListener('click', () => dlg.close());
    dlg.addEventListener('close', () => {
      seq += 1;
      if (item && item.opener.isConnected) item.opener.focus();
      else status.focus();
    });
    return { start };
  })();

  function show(list, append) {
    if (!append) body.replaceChildren();
    for (const o of list.objects) body.append(row(o));
    nextPage = list.next_page;
    $('more').hidden = !nextPage;
  }

  async function open(f, page = 1) {
    folder = f;
    crumbs();
    try {
      const list = await call('GET', api + '/storage/folders/' + encodeURIComponent(f.id) + '/contents?page_size=' + PAGE + '&page=' + page);
      show(list, page > 1);
      say(body.rows.length + ' items.');
    } catch (e) {
      say('Not listed: ' + e.message);
    }
  }

  // One XHR (the only browser API that reports upload progress), `onProgress(sent)` as it goes.
  function send(method, url, blob, headers, onProgress) {
    return new Promise((resolve, reject) => {
      const x = new XMLHttpRequest();
      x.open(method, url);
      x.setRequestHeader('Authorization', 'Bearer ' + token);
      for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
      x.upload.onprogress = (e) => onProgress(e.loaded);
      x.onload = () => (x.status < 300 ? resolve(JSON.parse(x.responseText || 'null')) : reject(new Error(x.status + ' ' + x.responseText)));
      x.onerror = () => reject(new Error('the upload failed'));
      x.send(blob);
    });
  }

  async function upload(file) {
    const bar = $('upload-progress');
    const note = $('upload-status');
    bar.hidden = false;
    bar.max = Math.max(file.size, 1);
    bar.value = 0;
    note.textContent = 'Uploading ' + file.name + '…';
    try {
      if (!token) await fetchToken();
      let made;
      if (file.size < SESSION_FROM) {
        const meta = JSON.stringify({ name: file.name, parent_id: folder.id });
        made = await send('POST', api + '/storage/files', file, { 'X-Kloudless-Metadata': meta, 'Content-Type': 'application/octet-stream' }, (n) => {
          bar.value = n;
        });
      } else {
        const s = await call('POST', api + '/storage/multipart', {
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ name: file.name, parent_id: folder.id, size: file.size }),
        });
        let done = 0;
        for (let n = 1, off = 0; off < file.size || n === 1; n += 1, off += s.part_size) {
          const part = file.slice(off, Math.min(off + s.part_size, file.size));
          await send('PUT', api + '/storage/multipart/' + s.id + '?part_number=' + n, part, { 'Content-Type': 'application/octet-stream' }, (sent) => {
            bar.value = done + sent;
          });
          done += part.size;
          if (off + s.part_size >= file.size) break;
        }
        made = await call('POST', api + '/storage/multipart/' + s.id + '/complete');
      }
      bar.value = bar.max;
      note.textContent = 'Uploaded ' + made.name + '.';
      await open(folder);
    } catch (e) {
      note.textContent = 'Not uploaded: ' + e.message;
    }
  }

  $('upload').addEventListener('change', (ev) => {
    const f = ev.target.files[0];
    if (f) upload(f);
  });
  $('mkdir').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = $('folder-name').value;
    try {
      await call('POST', api + '/storage/folders', {
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ parent_id: folder.id, name }),
      });
      $('folder-name').value = '';
      await open(folder);
    } catch (e) {
      say('Not created: ' + e.message);
    }
  });
  $('search').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const q = $('q').value.trim();
    if (!q) return open(folder);
    try {
      const list = await call('GET', api + '/storage/search?q=' + encodeURIComponent(q));
      show(list, false);
      say(list.objects.length + ' found for ' + q + '.');
    } catch (e) {
      say('Search failed: ' + e.message);
    }
  });
  $('more').addEventListener('click', () => open(folder, nextPage));
  window.explorer = { upload, open: () => open(folder) };
  open(folder);
})();
