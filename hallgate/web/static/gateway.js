"use strict";
// The gateway's technician page: the daemon's own figures (its status, its devices, its
// buses' counters, the updates running, the last errors it reported), pushed every second,
// and an identify button per device. Every figure element carries its raw value in
// data-value (JSON) under a data-key, so a test compares it with the daemon's status.
(function () {
  const $ = function (id) { return document.getElementById(id); };
  const el = HallLive.el;
  const TOKEN = document.querySelector("meta[name='hallgate-token']").content;
  const WORDS = {
    server: "No connection to the gateway daemon: reconnecting. The figures may be out of date.",
    broker: "The gateway has lost the broker: events wait in its outbox until it is back.",
  };
  const STALE_S = 10;

  let state = null;
  let receivedAt = 0;
  let linkUp = false;
  let downSince = null;
  const deviceRows = new Map(); // "bus:address" -> {tr, cells, button}

  // 12s, 5m03s, 2h10m, 3d04h (as the technician commands say an age); a dash for none.
  function age(s) {
    if (s === null || s === undefined || isNaN(s)) return "\u2013";
    s = Math.floor(s);
    const pad = function (x) { return (x < 10 ? "0" : "") + x; };
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m" + pad(s % 60) + "s";
    if (s < 172800) return Math.floor(s / 3600) + "h" + pad(Math.floor(s % 3600 / 60)) + "m";
    return Math.floor(s / 86400) + "d" + pad(Math.floor(s % 86400 / 3600)) + "h";
  }

  function ms(s) {
    return s === null || s === undefined ? "\u2013" : (s * 1000).toFixed(s < 0.1 ? 1 : 0) + " ms";
  }

  function clock(at) {
    return new Date(at * 1000).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  }

  function valued(node, key, value) {
    node.dataset.key = key;
    node.dataset.value = JSON.stringify(value === undefined ? null : value);
    return node;
  }

  function show(node, key, value, text) {
    valued(node, key, value);
    node.textContent = text === undefined ? (value === null || value === undefined ? "\u2013" : String(value)) : text;
    return node;
  }

  // -- at a glance ----------------------------------------------------------------------
  function kpi(label, key, value, shown, level, subs) {
    const card = el("div", "kpi" + (level ? " " + level : ""));
    const big = show(el("div", "value"), key, value, shown);
    const sub = el("div", "sub");
    (subs || []).forEach(function (s, i) {
      if (i) sub.append(document.createTextNode(", "));
      sub.append(typeof s === "string" ? document.createTextNode(s) : s);
    });
    card.append(el("div", "label", label), big, sub);
    return card;
  }

  function part(key, value, text) { return show(el("span"), key, value, text); }

  function kpis(s) {
    const b = s.broker, o = s.outbox, d = s.devices;
    const awaiting = o.awaiting_receipt !== undefined ? o.awaiting_receipt : o.awaiting_puback;
    const cycles = Object.values(s.buses);
    const mean = cycles.length ? Math.max.apply(null, cycles.map(function (x) { return x.cycle_mean; })) : null;
    const puback = o.delivery !== "receipt";
    const central = puback ? "n/a" : o.central_online === true ? "online"
      : o.central_online === false ? "offline" : "unknown";
    const running = s.updates.running.length;
    const box = $("kpis");
    box.replaceChildren(
      kpi("Broker", "broker.connected", b.connected, b.connected ? "connected" : "lost",
          b.connected ? "good" : "bad",
          [part("broker.url", b.url, b.url || "not connected yet")].concat(
            b.connected || !b.last_error ? [] : [part("broker.last_error", b.last_error)])),
      kpi("Central", "outbox.central_online", o.central_online, central,
          puback ? null : o.central_online === false ? "bad" : o.central_online ? "good" : "warn",
          puback ? ["delivery = puback: no receipts asked for", "delivered " + (b.delivered || 0)]
            : (o.central_online === null || o.central_online === undefined ? ["no central/status heard yet"] : [])
              .concat(["receipts " + (b.receipts || 0), "events delivered " + (b.delivered || 0)])),
      kpi("Outbox", "outbox.depth", o.depth, o.depth,
          o.depth > 100 ? "warn" : "good",
          [part("outbox.waiting_to_send", o.waiting_to_send, o.waiting_to_send + " to send"),
           part("outbox." + (o.awaiting_receipt !== undefined ? "awaiting_receipt" : "awaiting_puback"),
                awaiting, awaiting + " awaiting " + (o.delivery === "receipt" ? "receipt" : "PUBACK")),
           part("outbox.oldest_age_s", o.oldest_age_s,
                o.oldest_age_s === null ? "none waiting" : "oldest " + age(o.oldest_age_s))]),
      kpi("Devices online", "devices.online", d.online, d.online + " / " + d.total,
          d.online < d.total ? "bad" : "good", [part("devices.total", d.total, d.total + " in the config or found")]),
      kpi("Poll cycle", "buses.cycle_mean", mean, ms(mean), null,
          [cycles.length + " bus" + (cycles.length === 1 ? "" : "es")]),
      kpi("Errors reported", "errors.reported", s.errors.reported, s.errors.reported,
          s.errors.reported ? "warn" : "good",
          [part("errors.published", s.errors.published, (s.errors.published || 0) + " sent"),
           part("errors.suppressed", s.errors.suppressed, (s.errors.suppressed || 0) + " summed up")]),
      kpi("Updates running", "updates.running", running, running, running ? "warn" : null,
          [s.updates.recent.length + " ended in the last hour"]));
  }

  // -- devices --------------------------------------------------------------------------
  const DEVICE_CELLS = [
    ["bus", ""], ["address", "num"], ["role", ""], ["window", "num"], ["online", ""],
    ["firmware", "mono"], ["boots", "num"], ["errors", "num"],
    ["board_id", "mono"],
  ];

  function deviceRow(key) {
    let row = deviceRows.get(key);
    if (row) return row;
    const tr = el("tr");
    tr.dataset.device = key;
    const cells = {};
    DEVICE_CELLS.forEach(function (c) { cells[c[0]] = el("td", c[1]); tr.append(cells[c[0]]); });
    const button = el("button", "identify", "Identify");
    button.type = "button";
    button.dataset.device = key;
    const last = el("td");
    last.append(button);
    tr.append(last);
    row = { tr: tr, cells: cells, button: button };
    deviceRows.set(key, row);
    return row;
  }

  function devices(list) {
    const body = $("devices").tBodies[0];
    const keys = list.map(function (r) { return r.bus + ":" + r.address; });
    const order = Array.from(body.children).map(function (tr) { return tr.dataset.device; });
    list.forEach(function (r, i) {
      const row = deviceRow(keys[i]), c = row.cells;
      show(c.bus, "bus", r.bus);
      show(c.address, "address", r.address);
      show(c.role, "role", r.role);
      show(c.window, "window", r.window);
      valued(c.online, "online", r.online);
      c.online.replaceChildren(el("span", "state state-" + (r.online ? "on" : "off"), r.online ? "yes" : "NO"));
      if (!r.online) c.online.append(document.createTextNode(r.seen_ago_s === null ? " never seen" : " seen " + age(r.seen_ago_s) + " ago"));
      show(c.firmware, "firmware", r.firmware);
      show(c.boots, "boots", r.device ? r.device.resets : null);
      show(c.errors, "errors", r.errors);
      c.errors.classList.toggle("nonzero", !!r.errors);
      show(c.board_id, "board_id", r.board_id, r.board_id ? String(r.board_id).slice(-8) : "\u2013");
      c.board_id.title = r.board_id || "";
    });
    const same = order.length === keys.length && order.every(function (k, i) { return k === keys[i]; });
    if (!same) body.replaceChildren.apply(body, keys.map(function (k) { return deviceRows.get(k).tr; }));
    Array.from(deviceRows.keys()).forEach(function (k) { if (keys.indexOf(k) < 0) deviceRows.delete(k); });
    $("no-devices").hidden = list.length > 0;
  }

  function identify(button) {
    const key = button.dataset.device;
    const at = key.lastIndexOf(":");
    const said = $("identify-said");
    button.disabled = true;
    fetch("/api/identify", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Hallgate-Token": TOKEN },
      body: JSON.stringify({ bus: key.slice(0, at), address: Number(key.slice(at + 1)), seconds: 10 }),
      credentials: "same-origin",
    }).then(function (r) {
      return r.text().then(function (text) { return { ok: r.ok, status: r.status, text: text }; });
    }).then(function (r) {
      said.hidden = false;
      said.classList.toggle("failed", !r.ok);
      if (r.ok) {
        const d = JSON.parse(r.text);
        said.textContent = "Device " + d.address + " on bus " + d.bus + " is showing itself for "
          + d.seconds + " s: a display flashes, a panel beeps.";
      } else {
        said.textContent = "Identify " + key + ": " + r.text.trim() + " (" + r.status + ")";
      }
      said.dataset.status = String(r.status);
    }).catch(function (e) {
      said.hidden = false;
      said.classList.add("failed");
      said.textContent = "Identify " + key + ": no answer from the gateway (" + e + ")";
      said.dataset.status = "0";
    }).then(function () { button.disabled = false; });
  }

  // -- buses ----------------------------------------------------------------------------
  function buses(all) {
    const body = $("buses").tBodies[0];
    body.replaceChildren();
    Object.keys(all).sort().forEach(function (name) {
      const s = all[name];
      // The share of the bus time firmware updates took (the poll cycle had the rest).
      const busy = (s.poll_time || 0) + (s.job_time || 0);
      const share = busy ? (s.job_time || 0) / busy : 0;
      const tr = el("tr");
      tr.dataset.bus = name;
      const cells = [
        ["name", el("td"), name], ["port", el("td", "mono"), s.port],
        ["cycles", el("td", "num"), s.cycles], ["cycle_mean", el("td", "num"), s.cycle_mean, ms(s.cycle_mean)],
        ["cycle_last", el("td", "num"), s.cycle_last, ms(s.cycle_last)],
        ["exchanges", el("td", "num"), s.exchanges], ["timeouts", el("td", "num"), s.timeouts],
        ["garbled", el("td", "num"), s.garbled], ["retries", el("td", "num"), s.retries],
        ["crc_errors", el("td", "num"), s.crc_errors], ["events", el("td", "num"), s.events],
        ["duplicates", el("td", "num"), s.duplicates],
        ["naks", el("td", "num"), s.naks], ["port_errors", el("td", "num"), s.port_errors],
        ["job_share", el("td", "num"), share, Math.round(share * 100) + "%"],
      ];
      cells.forEach(function (c) {
        show(c[1], c[0], c[2], c[3]);
        if (["timeouts", "garbled", "crc_errors", "naks", "port_errors"].indexOf(c[0]) >= 0 && c[2]) c[1].classList.add("nonzero");
        tr.append(c[1]);
      });
      body.append(tr);
    });
  }

  // -- updates and errors ---------------------------------------------------------------
  function updates(u) {
    const box = $("updates");
    box.replaceChildren();
    u.running.forEach(function (j) {
      const li = el("li");
      li.dataset.update = j.bus + ":" + j.address;
      const share = j.bytes ? Math.min(1, (j.offset || 0) / j.bytes) : 0;
      li.append(el("span", "kind", "bus " + j.bus + " device " + j.address),
                document.createTextNode((j.firmware || "?") + " \u2192 " + j.version + ", " + j.phase + ", "
                  + (j.offset || 0) + " of " + j.bytes + " bytes (" + Math.round(share * 100) + "%), "
                  + age(j.seconds) + (j.resent ? ", " + j.resent + " resent" : "")));
      const bar = el("div", "bar"), fill = el("div");
      fill.style.width = (share * 100).toFixed(1) + "%";
      bar.append(fill);
      li.append(valued(bar, "progress", share));
      box.append(li);
    });
    u.recent.forEach(function (r) {
      const li = el("li");
      const at = Date.parse(r.ended || "");
      li.append(el("span", "when", isNaN(at) ? "" : clock(at / 1000)),
                el("span", "outcome outcome-" + (r.outcome === "updated" ? "updated" : "other"), r.outcome),
                el("span", "kind", "bus " + r.bus + " device " + r.address),
                document.createTextNode((r.from || "?") + " \u2192 " + r.to + (r.reason ? ": " + r.reason : "")));
      box.append(li);
    });
    $("no-updates").hidden = u.running.length + u.recent.length > 0;
  }

  function errors(e) {
    const box = $("errors");
    box.replaceChildren();
    e.recent.forEach(function (x) {
      const li = el("li");
      li.dataset.kind = x.kind;
      li.append(el("span", "when", clock(x.at)), el("span", "kind", x.kind),
                document.createTextNode(x.reason));
      if (x.count > 1) li.append(el("span", "count", "\u00d7" + x.count));
      box.append(li);
    });
    $("no-errors").hidden = e.recent.length > 0;
    $("errors-hint").textContent = "the last " + e.recent.length + " the gateway reported on its errors topic";
  }

  // -- the whole page -------------------------------------------------------------------
  function render() {
    if (!state) return;
    const s = state;
    document.title = "Gateway " + s.site + "/" + s.gateway;
    $("name").textContent = s.site + "/" + s.gateway;
    $("about").textContent = "hallgate " + s.version + ", pid " + s.pid + ", up " + age(s.uptime_s) + ",";
    valued($("asof"), "at", s.at).textContent = "as of " + clock(s.at);
    kpis(s);
    devices(s.devices.rows);
    buses(s.buses);
    updates(s.updates);
    errors(s.errors);
    banner();
  }

  function banner() {
    let words = linkUp ? null : WORDS.server;
    if (!words && state && !state.broker.connected) words = WORDS.broker;
    if (!words && state && Date.now() - receivedAt > STALE_S * 1000) {
      words = "The figures were last updated " + Math.round((Date.now() - receivedAt) / 1000) + " s ago.";
    }
    $("banner").hidden = !words;
    $("banner").textContent = words || "";
  }

  // A stream that keeps failing may be a session that ended (a new token, 12 h gone):
  // then the login form, not a warning for ever.
  function probe() {
    if (linkUp || downSince === null || Date.now() - downSince < 4000) return;
    fetch("/api/gateway", { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) window.location.assign("/login");
    }).catch(function () {});
  }

  function onState(s) { state = s; receivedAt = Date.now(); render(); }
  function onLink(up) {
    linkUp = up;
    downSince = up ? null : (downSince === null ? Date.now() : downSince);
    banner();
  }

  $("devices").addEventListener("click", function (ev) {
    const button = ev.target.closest("button.identify");
    if (button && !button.disabled) identify(button);
  });
  setInterval(function () { banner(); probe(); }, 2000);
  HallLive.connect("/api/gateway/events", { state: onState }, onLink);
})();
