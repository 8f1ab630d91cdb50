"use strict";
// What both pages share: the live stream from the hall's server, kept alive, and the
// words for what is wrong with the links. No library, no build step.
//
// The stream is server-sent events. The browser reconnects by itself after a network
// error; on top of that a stream the browser has given up on (readyState CLOSED, e.g. the
// server answered an error while it restarted) is opened again after RETRY_MS, and one
// silent for WATCHDOG_MS (the server pings every 10 s) is taken for dead and opened again:
// a TV left on for weeks must not sit on a half-open connection.
window.HallLive = (function () {
  const RETRY_MS = 2000;
  const WATCHDOG_MS = 30000;

  function connect(url, handlers, onLink) {
    let es = null;
    let last = Date.now();
    let retry = null;

    function open() {
      clearTimeout(retry);
      if (es) es.close();
      es = new EventSource(url);
      last = Date.now();
      es.onopen = function () { last = Date.now(); onLink(true); };
      es.onerror = function () {
        onLink(false);
        if (es.readyState === EventSource.CLOSED) retry = setTimeout(open, RETRY_MS);
      };
      es.addEventListener("ping", function () { last = Date.now(); });
      Object.keys(handlers).forEach(function (name) {
        es.addEventListener(name, function (ev) {
          last = Date.now();
          let data;
          try { data = JSON.parse(ev.data); } catch (e) { return; }
          handlers[name](data);
        });
      });
    }

    setInterval(function () {
      if (Date.now() - last > WATCHDOG_MS) { onLink(false); open(); }
    }, 5000);
    open();
  }

  // The first thing wrong, in `words` (a page's language), or null when all is well.
  function problem(linkUp, status, words) {
    if (!linkUp) return words.server;
    if (!status) return null;
    if (status.broker === false) return words.broker;
    if (status.central === "offline") return words.central;
    return null;
  }

  // Seconds as m:ss, or h:mm:ss from an hour; a dash for none.
  function duration(s) {
    if (s === null || s === undefined || isNaN(s)) return "\u2013";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const pad = function (x) { return (x < 10 ? "0" : "") + x; };
    return h ? h + ":" + pad(m) + ":" + pad(sec) : m + ":" + pad(sec);
  }

  // An element with a class and text (never HTML: every figure comes from the broker).
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  return { connect: connect, problem: problem, duration: duration, el: el };
})();
