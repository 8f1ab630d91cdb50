"use strict";
// The manager's view: the central's figures of the day (its retained central/stats, the
// same code as `hallgate central report`), each window's panel and operator, the queue
// per service against the norm, two plots and the wait alerts. Every figure element
// carries its raw value in data-value (JSON), so a test compares it with the report.
(function () {
  const $ = function (id) { return document.getElementById(id); };
  const el = HallLive.el;
  const dur = HallLive.duration;
  const SVG = "http://www.w3.org/2000/svg";
  const WORDS = {
    server: "No connection to the hall's server: reconnecting. The figures may be out of date.",
    broker: "The server has lost the hall's broker: reconnecting. The figures may be out of date.",
    central: "The central queue service is offline: the figures are as it last published them.",
  };
  const STALE_S = 30; // figures older than this get a word in the banner

  let state = null;
  let receivedAt = 0;
  let linkUp = false;

  function pct(x) {
    if (x === null || x === undefined) return "\u2013";
    return (x * 100).toFixed(x > 0 && x < 0.1 ? 1 : 0) + "%";
  }

  // "ok", "warn" (from warn_s) or "over" (past the norm) for a wait in seconds.
  function level(s, stats) {
    if (s === null || s === undefined) return null;
    if (s > stats.norm_s) return "over";
    if (s >= (stats.warn_s || stats.norm_s * 2 / 3)) return "warn";
    return "ok";
  }

  function valued(node, value) {
    node.dataset.value = JSON.stringify(value === undefined ? null : value);
    return node;
  }

  function clock(at, tz, seconds) {
    const opts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (seconds) opts.second = "2-digit";
    try {
      return new Date(at * 1000).toLocaleTimeString("en-GB", tz ? Object.assign({ timeZone: tz }, opts) : opts);
    } catch (e) {
      return new Date(at * 1000).toLocaleTimeString("en-GB", opts);
    }
  }

  // -- the day's figures ----------------------------------------------------------------
  function kpis(stats) {
    const a = stats.all || {};
    const now = stats.now || {};
    const norm = Math.round(stats.norm_s / 60);
    const votes = a.votes || 0;
    const items = [
      ["issued", "Issued", a.issued, a.issued, "tickets today"],
      ["served", "Served", a.served, a.served, (a.noshow || 0) + " no-show"],
      ["waiting", "Waiting now", now.waiting, now.waiting,
       "longest " + dur(now.longest_wait_s), level(now.longest_wait_s, stats)],
      ["wait_avg_s", "Average wait", a.wait_avg_s, dur(a.wait_avg_s),
       "median " + dur(a.wait_p50_s), level(a.wait_avg_s, stats)],
      ["wait_p95_s", "95% waited at most", a.wait_p95_s, dur(a.wait_p95_s),
       "of " + (a.waits || 0) + " called", level(a.wait_p95_s, stats)],
      ["over_norm_share", "Over " + norm + " min", a.over_norm_share, pct(a.over_norm_share),
       (a.over_norm || 0) + " of " + (a.waits || 0) + " waits",
       a.over_norm ? "over" : "good"],
      ["over_norm", "Tea owed", a.over_norm, a.over_norm,
       "visitors who waited over " + norm + " min", a.over_norm ? "over" : "good"],
      ["satisfaction", "Satisfaction", a.satisfaction, pct(a.satisfaction),
       (a.likes || 0) + " likes of " + votes + " votes" + (a.misuse ? ", " + a.misuse + " misuse" : ""),
       a.satisfaction === null || a.satisfaction === undefined ? null
         : a.satisfaction >= 0.9 ? "good" : a.satisfaction >= 0.75 ? "warn" : "over"],
    ];
    const box = $("kpis");
    box.replaceChildren();
    items.forEach(function (k) {
      const card = valued(el("div", "kpi" + (k[5] ? " " + k[5] : "")), k[2]);
      card.dataset.kpi = k[0];
      card.append(el("div", "label", k[1]),
                  el("div", "value", k[3] === undefined || k[3] === null ? "\u2013" : k[3]),
                  el("div", "sub", k[4]));
      box.append(card);
    });
  }

  // -- per service: the queue against the norm -------------------------------------------
  function services(stats) {
    const body = $("services").tBodies[0];
    const now = (stats.now || {}).by_service || {};
    const names = stats.services || {};
    const day = stats.by_service || {};
    const codes = Array.from(new Set(Object.keys(names).concat(Object.keys(now)).concat(Object.keys(day)))).sort();
    $("services-hint").textContent = "oldest wait amber from " + dur(stats.warn_s)
      + ", red past " + dur(stats.norm_s);
    body.replaceChildren();
    codes.forEach(function (code) {
      const q = now[code] || {}, d = day[code] || {}, name = (names[code] || {}).name || "";
      const tr = el("tr");
      tr.dataset.service = code;
      const title = el("td", "name");
      title.append(el("span", "code", code), document.createTextNode(name));
      const oldest = q.waiting ? q.longest_wait_s : null;
      const lvl = level(oldest, stats);
      tr.append(title,
                valued(el("td", "num", q.waiting === undefined ? "\u2013" : q.waiting), q.waiting),
                valued(el("td", "num" + (lvl ? " wait-" + lvl : ""), oldest === null ? "\u2013" : dur(oldest)), oldest),
                el("td", "", (q.windows_open || []).join(", ") || "none"),
                valued(el("td", "num", d.issued || 0), d.issued || 0),
                valued(el("td", "num", d.served || 0), d.served || 0),
                valued(el("td", "num", dur(d.wait_avg_s)), d.wait_avg_s),
                valued(el("td", "num", pct(d.over_norm_share)), d.over_norm_share));
      tr.children[1].dataset.key = "waiting";
      tr.children[2].dataset.key = "oldest";
      tr.children[4].dataset.key = "issued";
      tr.children[5].dataset.key = "served";
      tr.children[6].dataset.key = "wait_avg_s";
      tr.children[7].dataset.key = "over_norm_share";
      body.append(tr);
    });
  }

  // -- per window ---------------------------------------------------------------------
  function windows(stats, byWindow) {
    const body = $("windows").tBodies[0];
    const live = (stats.now || {}).windows || {};
    const day = stats.by_window || {};
    const ns = Array.from(new Set(Object.keys(live).concat(Object.keys(byWindow))))
      .sort(function (a, b) { return a - b; });
    body.replaceChildren();
    ns.forEach(function (n) {
      const w = live[n] || {}, d = day[n] || {}, p = (byWindow[n] || {}).panel || {};
      const s = (byWindow[n] || {}).session || {};
      const mode = p.mode || w.mode || "idle";  // the panel is the fresher of the two
      const ticket = (mode === "called" || mode === "serving") ? (p.text || w.ticket) : null;
      const tr = el("tr");
      tr.dataset.window = n;
      const tcell = el("td", "", ticket || "");
      if (ticket && p.tea) tcell.append(el("span", "tea", "tea"));
      const cells = [
        ["n", el("td", "num", n), Number(n)],
        ["mode", el("td"), mode],
        ["ticket", tcell, ticket],
        ["operator", el("td", "", s.name || s.operator || w.operator || ""), s.operator || w.operator || null],
        ["queue", el("td", "num", p.queue === undefined ? "\u2013" : p.queue), p.queue],
        ["served", el("td", "num", d.served || 0), d.served || 0],
        ["wait_avg_s", el("td", "num", dur(d.wait_avg_s)), d.wait_avg_s],
        ["wait_p95_s", el("td", "num", dur(d.wait_p95_s)), d.wait_p95_s],
        ["satisfaction", el("td", "num", d.votes ? pct(d.satisfaction) + " (" + d.likes + "/" + d.votes + ")" : "\u2013"), d.satisfaction],
      ];
      cells[1][1].append(el("span", "state state-" + mode, mode));
      cells.forEach(function (c) { c[1].dataset.key = c[0]; valued(c[1], c[2]); tr.append(c[1]); });
      body.append(tr);
    });
  }

  // -- plots --------------------------------------------------------------------------
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function niceStep(max) {
    const steps = [1, 2, 5, 10, 15, 20, 30, 60, 120];
    return steps.find(function (s) { return max / s <= 6; }) || 240;
  }

  // Average wait per hour of issue as bars (coloured against the norm), the p95 as a tick,
  // the warning and the norm as dashed lines. Minutes up the side.
  function waitsChart(stats) {
    const box = $("waits-chart");
    const W = 640, H = 250, L = 40, R = 12, T = 12, B = 28;
    const hours = stats.by_hour || {};
    const keys = Object.keys(hours).filter(function (h) { return hours[h].waits; }).sort();
    box.replaceChildren();
    box.dataset.bars = String(keys.length);
    if (!keys.length) {
      box.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No waits yet"));
      return;
    }
    const norm = stats.norm_s / 60, warn = (stats.warn_s || 0) / 60;
    const top = Math.max(norm * 1.15, Math.max.apply(null, keys.map(function (h) {
      return (hours[h].wait_p95_s || 0) / 60;
    })) * 1.1);
    const y = function (m) { return T + (H - T - B) * (1 - m / top); };
    const step = niceStep(top);
    for (let m = 0; m <= top; m += step) {
      box.append(svg("line", { x1: L, x2: W - R, y1: y(m), y2: y(m), class: "gridline" }),
                 svg("text", { x: L - 6, y: y(m) + 4, "text-anchor": "end" }, m));
    }
    const slot = (W - L - R) / keys.length, bw = Math.min(56, Math.max(4, slot * 0.6));
    keys.forEach(function (h, i) {
      const row = hours[h], x = L + slot * i + (slot - bw) / 2;
      const avg = (row.wait_avg_s || 0) / 60, p95 = (row.wait_p95_s || 0) / 60;
      const lvl = level(row.wait_avg_s, stats);
      const fill = lvl === "over" ? "#c62828" : lvl === "warn" ? "#e0a100" : "#2f6fab";
      const bar = svg("rect", { x: x, y: y(avg), width: bw, height: Math.max(0, y(0) - y(avg)), fill: fill, class: "bar" });
      bar.append(svg("title", {}, h + ":00  average " + dur(row.wait_avg_s) + ", p95 " + dur(row.wait_p95_s) + ", " + row.waits + " waits"));
      box.append(bar, svg("line", { x1: x - 2, x2: x + bw + 2, y1: y(p95), y2: y(p95), class: "p95" }),
                 svg("text", { x: x + bw / 2, y: H - B + 16, "text-anchor": "middle" }, h));
    });
    if (warn > 0) box.append(svg("line", { x1: L, x2: W - R, y1: y(warn), y2: y(warn), class: "warnline" }));
    box.append(svg("line", { x1: L, x2: W - R, y1: y(norm), y2: y(norm), class: "norm" }),
               svg("text", { x: W - R, y: y(norm) - 4, "text-anchor": "end" }, "norm " + Math.round(norm) + " min"),
               svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }),
               svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  }

  // Visitors waiting through the day (the central's queue_by_time), as an area.
  function queueChart(stats) {
    const box = $("queue-chart");
    const W = 640, H = 210, L = 40, R = 12, T = 12, B = 28;
    const points = (stats.queue_by_time || {}).points || [];
    box.replaceChildren();
    box.dataset.points = String(points.length);
    if (points.length < 2) {
      box.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No queue yet"));
      return;
    }
    const top = Math.max(4, Math.max.apply(null, points.map(function (p) { return p[1]; })) * 1.15);
    const x = function (i) { return L + (W - L - R) * i / (points.length - 1); };
    const y = function (v) { return T + (H - T - B) * (1 - v / top); };
    const step = niceStep(top);
    for (let v = 0; v <= top; v += step) {
      box.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }),
                 svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v));
    }
    const line = points.map(function (p, i) { return x(i).toFixed(1) + "," + y(p[1]).toFixed(1); });
    box.append(svg("polygon", { points: x(0) + "," + y(0) + " " + line.join(" ") + " " + x(points.length - 1) + "," + y(0), class: "area" }),
               svg("polyline", { points: line.join(" "), class: "line" }));
    let lastLabel = -Infinity;
    points.forEach(function (p, i) {
      if (p[0].slice(3) === "00" && x(i) - lastLabel > 34) {
        box.append(svg("text", { x: x(i), y: H - B + 16, "text-anchor": "middle" }, p[0]));
        lastLabel = x(i);
      }
    });
    box.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }),
               svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  }

  // -- alerts and calls ---------------------------------------------------------------
  const ALERT_WORDS = { "wait-warn": "waiting long", "over-norm": "past the norm",
                        "slot-overdue": "appointment overdue" };

  function alerts(list, stats) {
    const box = $("alerts");
    box.replaceChildren();
    list.slice(0, 12).forEach(function (a) {
      const li = el("li");
      const at = Date.parse(a.ts || "");
      const when = isNaN(at) ? "" : clock(at / 1000, stats && stats.tz, false);
      li.append(el("span", "when", when), el("span", "ticket", a.ticket + " "),
                el("span", "wait-" + (a.kind === "over-norm" ? "over" : "warn"),
                   ALERT_WORDS[a.kind] || a.kind),
                document.createTextNode(" " + dur(a.waited_s) + ", service " + a.service + ", "
                  + a.waiting + " waiting, windows open: " + ((a.windows_open || []).join(", ") || "none")));
      box.append(li);
    });
    $("no-alerts").hidden = list.length > 0;
  }

  function calls(list) {
    const box = $("calls");
    box.replaceChildren();
    list.slice(0, 12).forEach(function (c) {
      const li = el("li");
      li.append(el("span", "ticket", c.ticket), document.createTextNode(" \u2192 window " + c.window));
      box.append(li);
    });
  }

  // -- the whole page -----------------------------------------------------------------
  function render() {
    if (!state) return;
    $("site").textContent = state.site;
    const stats = state.stats;
    if (stats) {
      const now = stats.now || {};
      $("day").textContent = stats.day || "";
      $("asof").textContent = now.at ? "as of " + clock(now.at, stats.tz, true) + (stats.tz ? " " + stats.tz : "") : "";
      kpis(stats);
      services(stats);
      windows(stats, state.windows || {});
      waitsChart(stats);
      queueChart(stats);
    }
    alerts(state.alerts || [], stats);
    calls(state.calls || []);
    banner();
  }

  function banner() {
    let words = HallLive.problem(linkUp, state && state.status, WORDS);
    const age = state && state.status && state.status.stats_age_s;
    if (!words && state && state.stats === null) words = "No figures yet: is the central queue service running?";
    if (!words && age !== null && age !== undefined) {
      const now = age + (Date.now() - receivedAt) / 1000;
      if (now > STALE_S) words = "The figures were last updated " + Math.round(now) + " s ago.";
    }
    $("banner").hidden = !words;
    $("banner").textContent = words || "";
  }

  function onState(s) { state = s; receivedAt = Date.now(); render(); }
  function onCall(c) {
    if (!state) return;
    state.calls = [c].concat((state.calls || []).filter(function (x) {
      return !(x.ticket === c.ticket && x.window === c.window);
    })).slice(0, 12);
    calls(state.calls);
  }
  function onLink(up) { linkUp = up; banner(); }

  setInterval(banner, 5000);
  HallLive.connect("/api/manager/events", { state: onState, call: onCall }, onLink);
})();
