// Hammer IoT dashboard: live regions refreshed on Server-Sent Events, actions and the
// deployment form sent to the JSON API with the session cookie. No token is ever stored.
(function () {
  'use strict';

  function show(id, msg) {
    var el = document.getElementById(id);
    if (!el) return;
    el.textContent = msg || '';
    el.hidden = !msg;
  }
  function error(msg) { show('error', msg); if (msg) show('notice', ''); }
  function notice(msg) { show('notice', msg); if (msg) show('error', ''); }

  // Calls the JSON API; throws an Error carrying the API's own message.
  async function api(method, url, body) {
    var opts = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    var r;
    try { r = await fetch(url, opts); } catch (e) { throw new Error('The service cannot be reached (' + e.message + ').'); }
    var text = await r.text();
    var data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (r.status === 401) { location.href = '/login'; throw new Error('Your session ended: sign in again.'); }
    if (!r.ok) throw new Error((data && data.error) || ('The service answered HTTP ' + r.status + '.'));
    return data;
  }

  // Live regions: elements with data-live="URL" are re-rendered by the server on events.
  var running = false, again = false, timer = null;
  async function refresh() {
    if (running) { again = true; return; }
    running = true;
    try {
      var els = document.querySelectorAll('[data-live]');
      for (var i = 0; i < els.length; i++) {
        var el = els[i];
        try {
          var r = await fetch(el.getAttribute('data-live'), { credentials: 'same-origin' });
          if (r.redirected && /\/login$/.test(r.url)) { location.href = '/login'; return; }
          if (!r.ok) { error('Could not refresh the page (HTTP ' + r.status + ').'); continue; }
          var html = await r.text();
          // Expanded <details> (a release's phases) stay open across the refresh: read which
          // are open only now, after the last await, so that one opened while the answer was
          // on its way is kept too.
          var open = Array.prototype.map.call(el.querySelectorAll('details[open][id]'), function (d) { return d.id; });
          el.innerHTML = html;
          open.forEach(function (id) {
            var d = document.getElementById(id);
            if (d && el.contains(d)) d.open = true;
          });
        } catch (e) { error('Could not refresh the page (' + e.message + ').'); }
      }
    } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  }
  function schedule() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; refresh(); }, 200);
  }

  // Times: <time data-ago> shows "3 min ago" (the absolute UTC time in its title); the words
  // follow the clock with the server's rules (html::ago).
  function ago(ms, now) {
    var s = Math.floor(Math.max(0, now - ms) / 1000);
    if (s < 5) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  // A length of time with the server's words (html::duration).
  function duration(ms) {
    var s = Math.floor(Math.max(0, ms) / 1000);
    if (s < 1) return 'under 1 s';
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
  }
  function refreshTimes() {
    var now = Date.now();
    var since = document.querySelectorAll('[data-since]');
    for (var j = 0; j < since.length; j++) {
      var from = Number(since[j].getAttribute('data-since'));
      if (from) since[j].textContent = duration(now - from);
    }
    var els = document.querySelectorAll('time[data-ago]');
    for (var i = 0; i < els.length; i++) {
      var t = Date.parse(els[i].getAttribute('datetime'));
      if (!isNaN(t)) els[i].textContent = ago(t, now);
    }
  }

  // Logs: the page opens with the lines the service keeps; lines from events are appended.
  // When the stream (re)opens the kept lines are fetched again, so nothing printed between
  // the page render and the stream (or during a reconnection) is missing.
  var MAX_LOG_LINES = 500;
  var logsSyncing = false, logsHeld = [];
  function appendLogs(device, lines) {
    var pre = document.getElementById('logs');
    if (!pre || pre.getAttribute('data-device') !== device || !lines || !lines.length) return;
    if (logsSyncing) { logsHeld.push(lines); return; }
    var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    var all = (pre.textContent + lines.join('\n') + '\n').split('\n');
    if (all.length > MAX_LOG_LINES + 1) all = all.slice(all.length - MAX_LOG_LINES - 1);
    pre.textContent = all.join('\n');
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }
  async function syncLogs() {
    var pre = document.getElementById('logs');
    if (!pre || logsSyncing) return;
    logsSyncing = true; logsHeld = [];
    var kept = null;
    try {
      var d = await api('GET', pre.getAttribute('data-logs'));
      kept = (d && d.lines) || [];
    } catch (e) { error(e.message); }
    logsSyncing = false;
    var held = logsHeld; logsHeld = [];
    var device = pre.getAttribute('data-device');
    if (kept) {
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.textContent = kept.length ? kept.join('\n') + '\n' : '';
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    // Batches that came while asking: those the answer already ends with are not repeated.
    held.forEach(function (lines) {
      var tail = kept ? kept.slice(kept.length - lines.length) : [];
      if (kept && tail.length === lines.length && tail.join('\n') === lines.join('\n')) return;
      appendLogs(device, lines);
    });
  }

  function startEvents() {
    var src = document.body.getAttribute('data-events');
    var live = document.getElementById('live');
    if (!src || !window.EventSource) return;
    // restarting: the service said it is stopping (`event: reconnect`, a restart or a replica
    // leaving the load balancer); EventSource reconnects by itself after the event's retry.
    var es = null, restarting = false, retries = 0;
    function reconnecting() {
      if (live) { live.textContent = 'reconnecting…'; live.className = 'live'; }
    }
    function open() {
      es = new EventSource(src);
      es.onopen = function () {
        restarting = false; retries = 0;
        if (live) { live.textContent = 'live'; live.className = 'live on'; }
        schedule(); // catch up on anything between the page render and the stream
        syncLogs();
      };
      es.addEventListener('reconnect', function () { restarting = true; reconnecting(); });
      es.onerror = function () {
        if (es.readyState === EventSource.CLOSED && restarting && retries < 30) {
          // The reconnection found no service yet (a 502/503 while replicas restart): retry.
          retries++;
          reconnecting();
          setTimeout(open, Math.min(1000 * retries, 10000));
          return;
        }
        if (!live) return;
        if (es.readyState === EventSource.CLOSED) {
          live.textContent = 'offline';
          error('Live updates stopped; reload the page (or sign in again).');
        } else {
          live.textContent = 'reconnecting…';
        }
        live.className = 'live';
      };
      es.onmessage = function (m) {
        var ev;
        try { ev = JSON.parse(m.data); } catch (_) { return; }
        if (ev.kind === 'logs') { appendLogs(ev.device, ev.lines); return; }
        schedule();
      };
    }
    open();
    window.addEventListener('pagehide', function () { if (es) es.close(); });
  }

  function keepLogsStreaming() {
    var pre = document.getElementById('logs');
    if (!pre) return;
    setInterval(function () {
      api('GET', pre.getAttribute('data-logs')).catch(function (e) { error(e.message); });
    }, 45000);
  }

  // Buttons with data-action="URL" POST to the API after a confirmation.
  document.addEventListener('click', async function (e) {
    var b = e.target.closest ? e.target.closest('button[data-action]') : null;
    if (!b) return;
    var q = b.getAttribute('data-confirm');
    if (q && !window.confirm(q)) return;
    b.disabled = true;
    try {
      var r = await api('POST', b.getAttribute('data-action'));
      // data-follow: the answer is a new deployment (retry); show it.
      if (b.hasAttribute('data-follow') && r && r.id) {
        window.location.href = '/deployments/' + encodeURIComponent(r.id);
        return;
      }
      var label = b.textContent.trim();
      notice(label + ': accepted' + (r && r.generation ? ' (generation ' + r.generation + ')' : '') + '.');
      schedule();
    } catch (err) {
      error(err.message);
    } finally {
      // A live refresh may have replaced the button (enabled or not by the device's state).
      if (b.isConnected) b.disabled = false;
    }
  });

  function deployForm() {
    var form = document.querySelector('form[data-deploy]');
    if (!form) return;
    // The preview: which devices the names or tag select, what they run, what the ref does.
    var box = form.querySelector('[data-preview]'), out = document.getElementById('preview-body');
    var pTimer = null, pSeq = 0;
    async function preview() {
      var q = new URLSearchParams();
      form.querySelectorAll('input[name=names]:checked').forEach(function (i) { q.append('names', i.value); });
      q.append('tag', form.elements['tag'].value.trim());
      q.append('ref', form.elements['ref'].value.trim());
      q.append('phases', form.elements['phases'].value.trim());
      var seq = ++pSeq;
      try {
        var r = await fetch(box.getAttribute('data-preview') + '&' + q.toString(), { credentials: 'same-origin' });
        if (r.redirected && /\/login$/.test(r.url)) { location.href = '/login'; return; }
        var html = await r.text();
        if (seq === pSeq && r.ok) out.innerHTML = html;
      } catch (e) { error('Could not show what the deployment reaches (' + e.message + ').'); }
    }
    if (box && out) {
      var later = function () { clearTimeout(pTimer); pTimer = setTimeout(preview, 250); };
      form.addEventListener('input', later);
      form.addEventListener('change', later);
    }
    form.addEventListener('submit', async function (e) {
      e.preventDefault();
      var f = form.elements;
      var names = Array.prototype.map.call(form.querySelectorAll('input[name=names]:checked'), function (i) { return i.value; });
      var tag = f['tag'].value.trim();
      if (tag && names.length) { error('Choose devices or a tag, not both.'); return; }
      if (!tag && !names.length) { error('Choose at least one device, or enter a tag.'); return; }
      var body = { targets: tag ? { tag: tag } : { names: names }, strategy: {} };
      var ref = f['ref'].value.trim();
      if (ref) body.git_ref = ref;
      ['max_in_flight', 'abort_at_percent', 'abort_min_devices'].forEach(function (n) {
        var v = f[n].value.trim();
        if (v !== '') body.strategy[n] = Number(v);
      });
      // Phases as typed (`1,10%`): the service checks them (the preview shows its reading).
      var phases = f['phases'].value.trim();
      if (phases) {
        body.strategy.phases = phases.split(',').map(function (p) {
          p = p.trim();
          return /%$/.test(p) ? { percent: Number(p.slice(0, -1)) } : { devices: Number(p) };
        });
      }
      var soak = f['soak_minutes'].value.trim();
      if (soak !== '') body.strategy.soak_secs = Math.round(Number(soak) * 60);
      var start = f['start_at'].value;
      if (start) body.strategy.start_at = new Date(start).getTime();
      var btn = document.getElementById('deploy-submit');
      btn.disabled = true;
      try {
        var d = await api('POST', '/api/v1/deployments', body);
        location.href = '/deployments/' + encodeURIComponent(d.id);
      } catch (err) {
        error(err.message);
        btn.disabled = false;
      }
    });
  }

  // The kill switch: mark a commit bad (with a reason, optionally rolling devices back).
  function badCommitForm() {
    var form = document.querySelector('form[data-mark-bad]');
    if (!form) return;
    form.addEventListener('submit', async function (e) {
      e.preventDefault();
      var f = form.elements;
      var sha = f['commit'].value.trim().toLowerCase();
      var body = { rollback: f['rollback'].checked };
      var reason = f['reason'].value.trim();
      if (reason) body.reason = reason;
      var q = 'Mark ' + sha.slice(0, 12) + ' bad? Your running deployments of it stop' +
        (body.rollback ? ' and your devices running it roll back.' : '.');
      if (!window.confirm(q)) return;
      var btn = document.getElementById('bad-submit');
      btn.disabled = true;
      try {
        await api('POST', '/api/v1/commits/' + encodeURIComponent(sha) + '/bad', body);
        window.location.href = '/commits';
      } catch (err) {
        error(err.message);
        btn.disabled = false;
      }
    });
  }

  // Buttons with data-delete="URL" DELETE through the API after a confirmation, then reload.
  document.addEventListener('click', async function (e) {
    var b = e.target.closest ? e.target.closest('button[data-delete]') : null;
    if (!b) return;
    var q = b.getAttribute('data-confirm');
    if (q && !window.confirm(q)) return;
    b.disabled = true;
    try {
      await api('DELETE', b.getAttribute('data-delete'));
      location.reload();
    } catch (err) {
      error(err.message);
      b.disabled = false;
    }
  });

  // The add-webhook form: POST /api/v1/webhooks; the secret is shown once, in the page.
  (function () {
    var form = document.querySelector('form[data-webhook]');
    if (!form) return;
    form.addEventListener('submit', async function (e) {
      e.preventDefault();
      var events = Array.prototype.map.call(form.querySelectorAll('input[name=events]:checked'), function (i) { return i.value; });
      var btn = document.getElementById('webhook-submit');
      btn.disabled = true;
      try {
        var w = await api('POST', '/api/v1/webhooks', { url: form.elements['url'].value.trim(), events: events });
        var box = document.getElementById('webhook-secret');
        box.textContent = 'Webhook added. Its signing secret, shown only now: ' + w.secret + ' (reload the page to see it listed).';
        box.hidden = false;
        form.elements['url'].value = '';
        error('');
      } catch (err) {
        error(err.message);
      } finally {
        btn.disabled = false;
      }
    });
  })();

  // The sign-in page is no-store and its field autocomplete="off"; should a browser still
  // restore the page from its back/forward cache, the typed token is wiped.
  window.addEventListener('pageshow', function (e) {
    var t = document.getElementById('token');
    if (e.persisted && t && t.type === 'password') t.value = '';
  });

  // Maintenance windows (/windows): the add form, through the JSON API; removal is a
  // data-delete button.
  function windowForm() {
    var form = document.querySelector('form[data-window-form]');
    if (!form) return;
    form.addEventListener('submit', async function (e) {
      e.preventDefault();
      var f = form.elements;
      var device = f['device'].value.trim(), tag = f['tag'].value.trim();
      if (device && tag) { error('Give a device or a tag, not both.'); return; }
      if (!device && !tag) { error('Give a device, or a tag such as site=lab.'); return; }
      var body = { applies_to: device ? { device: device } : { tag: tag }, window: f['window'].value.trim() };
      var name = f['name'].value.trim();
      if (name) body.name = name;
      var btn = document.getElementById('window-submit');
      btn.disabled = true;
      try {
        await api('POST', '/api/v1/windows', body);
        location.reload();
      } catch (err) {
        error(err.message);
        btn.disabled = false;
      }
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    startEvents();
    keepLogsStreaming();
    setInterval(refreshTimes, 5000);
    deployForm();
    badCommitForm();
    windowForm();
  });
})();
