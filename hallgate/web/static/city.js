"use strict";
// The city page: every centre's figures of the day from the city's retained overview
// (central/overview.py: the centres' own central/stats, the city's totals), worst first.
// Every figure element carries its raw value in data-value (JSON), so a test compares
// it with the overview and with each centre's stats.
(function () {
  const $ = function (id) { return document.getElementById(id); };
  const el = HallLive.el;
  const dur = HallLive.duration;
  const WORDS = {
    server: "No connection to the city page's server: reconnecting. The figures may be out of date.",
    broker: "The server has lost the city's brokers: reconnecting. The figures may be out of date.",
  };
  const STALE_S = 150; // the overview comes at least every minute: past this, say so
  const SHARE_RED = 0.10; // over the norm: amber above 0, red from this share of waits

  let state = null;
  let receivedAt = 0;
  let linkUp = false;

  function pct(x) {
    if (x === null || x === undefined) return "\u2013";
    return (x * 100).toFixed(x > 0 && x < 0.1 ? 1 : 0) + "%";
  }

  // "ok", "warn" (from warn_s) or "over" (past the norm) for a wait, as the manager's view.
  function level(s, norm, warn) {
    if (s === null || s === undefined || !norm) return null;
    if (s > norm) return "over";
    if (s >= (warn || norm * 2 / 3)) return "warn";
    return "ok";
  }

  function shareLevel(x) {
    if (x === null || x === undefined) return null;
    return x >= SHARE_RED ? "over" : x > 0 ? "warn" : "ok";
  }

  function satisfactionLevel(x) {
    if (x === null || x === undefined) return null;
    return x >= 0.9 ? "good" : x >= 0.75 ? "warn" : "over";
  }

  function valued(node, value) {
    node.dataset.value = JSON.stringify(value === undefined ? null : value);
    return node;
  }

  function stateOf(row) {
    if (row.online === false) return "offline";
    if (row.stale) return "stale";
    return "online";
  }

  const SAID = { online: "online", offline: "offline", stale: "no figures" };

  // -- the city's figures ---------------------------------------------------------------
  function kpis(o) {
    const a = o.all || {};
    const rows = Object.values(o.centres || {});
    const norms = rows.map(function (r) { return r.norm_s; }).filter(Boolean);
    const norm = norms.length ? Math.min.apply(null, norms) : null;
    const warns = rows.map(function (r) { return r.warn_s; }).filter(Boolean);
    const warn = warns.length ? Math.min.apply(null, warns) : null;
    // the oldest wait's colour: the worst of the centres' own (each against its norm)
    const rank = { ok: 1, warn: 2, over: 3 };
    let oldest = null;
    rows.forEach(function (r) {
      const l = level(r.waiting ? r.longest_wait_s : null, r.norm_s, r.warn_s);
      if (l && (!oldest || rank[l] > rank[oldest])) oldest = l;
    });
    const silent = (a.offline || 0) + (a.stale || 0);
    const items = [
      ["online", "Centres online", a.online, (a.online || 0) + " / " + (a.centres || 0),
       (a.offline || 0) + " offline, " + (a.stale || 0) + " without fresh figures",
       silent ? "over" : "good"],
      ["waiting", "Waiting now", a.waiting, a.waiting,
       "longest " + dur(a.longest_wait_s), oldest],
      ["served", "Served", a.served, a.served,
       (a.issued || 0) + " issued, " + (a.noshow || 0) + " no-show"],
      ["wait_avg_s", "Average wait", a.wait_avg_s, dur(a.wait_avg_s),
       "over " + (a.waits || 0) + " waits", level(a.wait_avg_s, norm, warn)],
      ["over_norm_share", "Over the norm", a.over_norm_share, pct(a.over_norm_share),
       (a.over_norm || 0) + " of " + (a.waits || 0) + " waits", shareLevel(a.over_norm_share)],
      ["satisfaction", "Satisfaction", a.satisfaction, pct(a.satisfaction),
       (a.likes || 0) + " likes of " + (a.votes || 0) + " votes",
       satisfactionLevel(a.satisfaction)],
    ];
    const box = $("kpis");
    box.replaceChildren();
    items.forEach(function (k) {
      const card = valued(el("div", "kpi" + (k[5] ? " " + (k[5] === "ok" ? "good" : k[5]) : "")), k[2]);
      card.dataset.kpi = k[0];
      card.append(el("div", "label", k[1]),
                  el("div", "value", k[3] === undefined || k[3] === null ? "\u2013" : k[3]),
                  el("div", "sub", k[4]));
      box.append(card);
    });
  }

  // -- a row per centre, worst first; the city's under them ------------------------------
  function cells(tr, row, name) {
    const oldest = row.waiting ? row.longest_wait_s : null;
    const wl = level(oldest, row.norm_s, row.warn_s);
    const sl = shareLevel(row.over_norm_share);
    const st = name === null ? null : stateOf(row);
    const stateCell = el("td", "state-cell");
    if (st) stateCell.append(el("span", "state state-" + st, SAID[st]));
    const list = [
      ["site", name === null ? el("td", "name", "City") : name, name === null ? null : tr.dataset.site],
      ["state", stateCell, st],
      ["waiting", el("td", "num", row.waiting), row.waiting],
      ["longest_wait_s", el("td", "num" + (wl ? " wait-" + wl : ""), oldest === null ? "\u2013" : dur(oldest)), oldest],
      ["windows_open", el("td", "num", row.windows_open), row.windows_open],
      ["issued", el("td", "num", row.issued), row.issued],
      ["served", el("td", "num", row.served), row.served],
      ["wait_avg_s", el("td", "num", dur(row.wait_avg_s)), row.wait_avg_s],
      ["over_norm_share", el("td", "num" + (sl ? " wait-" + sl : ""), pct(row.over_norm_share)), row.over_norm_share],
      ["satisfaction", el("td", "num", row.votes ? pct(row.satisfaction) + " (" + row.likes + "/" + row.votes + ")" : "\u2013"), row.satisfaction],
    ];
    list.forEach(function (c) { c[1].dataset.key = c[0]; valued(c[1], c[2]); tr.append(c[1]); });
  }

  function centres(o, template) {
    const body = $("centres").tBodies[0];
    const rows = o.centres || {};
    const order = (o.worst_first || []).filter(function (s) { return s in rows; });
    Object.keys(rows).sort().forEach(function (s) { if (order.indexOf(s) < 0) order.push(s); });
    body.replaceChildren();
    order.forEach(function (site) {
      const row = rows[site];
      const tr = el("tr", stateOf(row) === "online" ? "" : "silent");
      tr.dataset.site = site;
      const name = el("td", "name");
      if (template) {
        const a = el("a", "", site);
        a.href = template.split("{site}").join(encodeURIComponent(site));
        a.target = "_blank";
        a.rel = "noopener";
        name.append(a);
      } else {
        name.textContent = site;
      }
      if (row.day && o.day && row.day !== o.day) name.append(el("span", "day", row.day + "'s, not counted"));
      cells(tr, row, name);
      body.append(tr);
    });
    const foot = $("centres").tFoot;
    foot.replaceChildren();
    const total = el("tr");
    total.id = "city-total";
    cells(total, o.all || {}, null);
    foot.append(total);
    $("no-centres").hidden = order.length > 0;
    $("centres-hint").textContent = "oldest wait amber from the warning, red past the norm; "
      + "over the norm amber above 0, red from " + pct(SHARE_RED) + " of waits";
  }

  // -- the whole page -----------------------------------------------------------------
  function render() {
    if (!state) return;
    $("city").textContent = state.city;
    const o = state.overview;
    if (o) {
      $("day").textContent = o.day || "";
      const at = Date.parse(o.ts || "");
      $("asof").textContent = isNaN(at) ? "" : "as of " + new Date(at).toLocaleTimeString(
        "en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
      kpis(o);
      centres(o, state.manager_url);
    }
    banner();
  }

  function banner() {
    let words = HallLive.problem(linkUp, state && state.status, WORDS);
    if (!words && state && !state.overview) {
      words = "No overview of the city yet: is its overview service running (hallgate central overview)?";
    }
    const age = state && state.status && state.status.overview_age_s;
    if (!words && age !== null && age !== undefined) {
      const now = age + (Date.now() - receivedAt) / 1000;
      if (now > STALE_S) words = "The city's figures were last published " + Math.round(now) + " s ago: is its overview service running?";
    }
    $("banner").hidden = !words;
    $("banner").textContent = words || "";
  }

  function onState(s) { state = s; receivedAt = Date.now(); render(); }
  function onLink(up) { linkUp = up; banner(); }

  setInterval(banner, 5000);
  HallLive.connect("/api/city/events", { state: onState }, onLink);
})();
