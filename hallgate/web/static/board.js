"use strict";
// The hall board: the last calls (ticket -> window), the newest large and blinking, a
// chime on each call and, where the browser has a voice, the call spoken.
// Parameters (checked by the server too): n = calls listed (1-12, default 6),
// lang = en | ru, sound = voice | chime | off.
//
// Sound needs the browser's permission to play without a click: a kiosk starts Chromium
// with --autoplay-policy=no-user-gesture-required (README, "Pages"); otherwise a note asks
// for one click, which turns it on until the page is reloaded.
(function () {
  const params = new URLSearchParams(location.search);
  const N = Math.min(12, Math.max(1, parseInt(params.get("n") || "6", 10) || 6));
  const LANG = params.get("lang") === "ru" ? "ru" : "en";
  const SOUND = ["voice", "chime", "off"].indexOf(params.get("sound")) >= 0
    ? params.get("sound") : "voice";
  const BLINK_MS = 10000; // as long as the window displays blink for a call
  const MAX_PENDING = 3; // a busy hall: older announcements give way (they are on the board)

  const WORDS = {
    en: {
      title: "Electronic queue", ticket: "Ticket", window: "Window", empty: "No calls yet",
      server: "No connection to the hall's server: reconnecting. The list may be out of date.",
      broker: "The server has lost the hall's network: reconnecting. The list may be out of date.",
      central: "The queue service is offline: new calls will show when it is back.",
      soundOff: "Sound is off: click anywhere to turn it on",
      voice: "en-US",
      say: function (ticket, n) { return "Ticket " + ticket + ", window " + n; },
    },
    ru: {
      title: "Электронная очередь",
      ticket: "Талон", window: "Окно",
      empty: "Вызовов пока нет",
      server: "Нет связи с сервером: подключаемся. Список может быть устаревшим.",
      broker: "Сервер потерял связь с залом: подключаемся.",
      central: "Сервис очереди не работает: новые вызовы появятся, когда он вернётся.",
      soundOff: "Звук выключен: нажмите, чтобы включить",
      voice: "ru-RU",
      say: function (ticket, n) {
        return "Талон " + ticket + ", окно " + n;
      },
    },
  }[LANG];

  const $ = function (id) { return document.getElementById(id); };
  let calls = []; // newest first: {id, ticket, window, recall}
  const seen = new Set(); // ids already announced or listed
  const freshUntil = {}; // id -> Date.now() until which it blinks
  let status = null;
  let linkUp = false;

  document.documentElement.lang = LANG;
  $("title").textContent = WORDS.title;
  $("h-ticket").textContent = WORDS.ticket;
  $("h-window").textContent = WORDS.window;
  $("empty").textContent = WORDS.empty;

  function render() {
    const list = $("calls");
    const now = Date.now();
    list.replaceChildren();
    calls.forEach(function (c, i) {
      const li = HallLive.el("li", "call" + (i === 0 ? " newest" : ""));
      if (i === 0 && (freshUntil[c.id] || 0) > now) li.classList.add("fresh");
      li.dataset.id = c.id;
      li.dataset.ticket = c.ticket;
      li.dataset.window = String(c.window);
      li.append(HallLive.el("span", "ticket", c.ticket), HallLive.el("span", "arrow", "\u2192"),
                HallLive.el("span", "window", c.window));
      list.append(li);
    });
    $("empty").hidden = calls.length > 0;
  }

  function showProblem() {
    const words = HallLive.problem(linkUp, status, WORDS);
    $("banner").hidden = !words;
    $("banner").textContent = words || "";
  }

  // The whole list (at connect, and when it changed): no sound.
  function onCalls(data) {
    $("site").textContent = data.site || "";
    status = data.status;
    data.calls.forEach(function (c) { seen.add(c.id); });
    calls = data.calls.slice(0, N);
    render();
    showProblem();
  }

  // One call, as it happens: on top, blinking, announced.
  function onCall(c) {
    if (seen.has(c.id)) return;
    seen.add(c.id);
    if (seen.size > 2000) seen.clear(); // ids are per window and version: never reused
    calls = [c].concat(calls.filter(function (x) {
      return !(x.ticket === c.ticket && x.window === c.window);
    })).slice(0, N);
    freshUntil[c.id] = Date.now() + BLINK_MS;
    Object.keys(freshUntil).forEach(function (id) {
      if (freshUntil[id] < Date.now()) delete freshUntil[id];
    });
    render();
    setTimeout(render, BLINK_MS + 50);
    announce(c);
  }

  function onLink(up) { linkUp = up; showProblem(); }

  // -- sound --------------------------------------------------------------------------
  let audio = null;
  function audioContext() {
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!audio && AC) audio = new AC();
    return audio;
  }

  function soundHint() {
    const ac = audio;
    $("sound-hint").hidden = !(ac && ac.state !== "running");
  }

  // A two-note chime (E5, then C5), each a sine with a soft octave above, struck and fading.
  function chime() {
    const ac = audioContext();
    if (!ac) return;
    if (ac.state === "suspended") ac.resume();
    const t0 = ac.currentTime + 0.05;
    [[659.25, 0], [523.25, 0.5]].forEach(function (note) {
      [[note[0], 0.45], [note[0] * 2, 0.12]].forEach(function (partial) {
        const osc = ac.createOscillator();
        const gain = ac.createGain();
        const start = t0 + note[1];
        osc.type = "sine";
        osc.frequency.value = partial[0];
        gain.gain.setValueAtTime(0.0001, start);
        gain.gain.exponentialRampToValueAtTime(partial[1], start + 0.015);
        gain.gain.exponentialRampToValueAtTime(0.0001, start + 1.4);
        osc.connect(gain);
        gain.connect(ac.destination);
        osc.start(start);
        osc.stop(start + 1.5);
      });
    });
    setTimeout(soundHint, 300);
  }

  // "A017" is said "A 17", "P1.07" "P1 7": as an announcer would.
  function spoken(ticket) {
    const m = /^(.*?)\.?(\d+)$/.exec(ticket);
    return m ? m[1] + " " + String(parseInt(m[2], 10)) : ticket;
  }

  function voice() {
    const voices = window.speechSynthesis.getVoices();
    const lang = WORDS.voice.slice(0, 2);
    return voices.find(function (v) { return v.lang === WORDS.voice; })
      || voices.find(function (v) { return v.lang.slice(0, 2) === lang; }) || null;
  }

  const pending = [];
  let busy = false;
  function announce(c) {
    if (SOUND === "off") return;
    pending.push(c);
    while (pending.length > MAX_PENDING) pending.shift();
    if (!busy) next();
  }

  function next() {
    const c = pending.shift();
    if (!c) { busy = false; return; }
    busy = true;
    chime();
    if (SOUND !== "voice" || !("speechSynthesis" in window)) { setTimeout(next, 1800); return; }
    setTimeout(function () {
      const u = new SpeechSynthesisUtterance(WORDS.say(spoken(c.ticket), c.window));
      u.lang = WORDS.voice;
      u.rate = 0.9;
      const v = voice();
      if (v) u.voice = v;
      let done = false;
      const finish = function () { if (!done) { done = true; setTimeout(next, 300); } };
      u.onend = finish;
      u.onerror = finish;
      setTimeout(finish, 6000); // a browser with no voice may never say it ended
      window.speechSynthesis.speak(u);
    }, 1100);
  }

  if (SOUND !== "off") {
    $("sound-hint").textContent = WORDS.soundOff;
    audioContext();
    setTimeout(soundHint, 500);
    document.addEventListener("click", function () {
      const ac = audioContext();
      if (ac) ac.resume().then(soundHint);
    });
  }

  // -- the clock ----------------------------------------------------------------------
  function tick() {
    const d = new Date();
    $("clock").textContent = d.toLocaleTimeString(LANG === "ru" ? "ru-RU" : "en-GB",
                                                  { hour: "2-digit", minute: "2-digit" });
  }
  tick();
  setInterval(tick, 1000);

  HallLive.connect("/api/board/events", { calls: onCalls, call: onCall }, onLink);
})();
