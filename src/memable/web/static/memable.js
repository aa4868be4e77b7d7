// memable dashboard: live regions (server-sent events), local times, countdowns.
// No build step; htmx (vendored beside this file) handles the action forms.
(function () {
  "use strict";
  if (window.htmx) {
    // Show the dashboard's refusals (4xx/5xx) in the result area too.
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[2345]..", swap: true, error: false },
    ];
  }
  const fmtTime = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const fmtDate = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit",
  });
  const fmt = { format: function (d) {
    // Today: the time only; another day: the date and the minute.
    return d.toDateString() === new Date().toDateString() ? fmtTime.format(d) : fmtDate.format(d);
  } };
  function span(seconds) {
    const s = Math.abs(seconds);
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function tick(root) {
    const now = Date.now() / 1000;
    (root || document).querySelectorAll("time[data-t]").forEach(function (el) {
      const t = parseFloat(el.dataset.t);
      if (!el.dataset.local) { el.textContent = fmt.format(new Date(t * 1000)); el.dataset.local = "1"; }
      el.dataset.ago = now - t < 0 ? "in " + span(t - now) : span(now - t) + " ago";
    });
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      const left = parseFloat(el.dataset.deadline) - now;
      el.textContent = left > 0 ? "in " + span(left) : "due";
      el.classList.toggle("due", left <= 0);
    });
    document.querySelectorAll(".since[data-since]").forEach(function (el) {
      el.textContent = "running for " + span(now - parseFloat(el.dataset.since));
    });
  }
  function follow(el) {
    if (el.dataset.following) return;
    el.dataset.following = "1";
    let url = el.dataset.live;
    if (el.dataset.version) url += (url.indexOf("?") < 0 ? "?" : "&") + "version=" + el.dataset.version;
    const source = new EventSource(url);
    source.addEventListener("update", function (event) {
      if (!el.isConnected) { source.close(); return; }
      const open = Array.from(el.querySelectorAll("details[open][data-id]")).map(function (d) { return d.dataset.id; });
      el.innerHTML = event.data;
      open.forEach(function (id) {
        const d = el.querySelector('details[data-id="' + CSS.escape(id) + '"]');
        if (d) d.open = true;
      });
      el.dataset.updated = String(Number(el.dataset.updated || "0") + 1);
      if (window.htmx) htmx.process(el);
      tick(el);
    });
  }
  function start() {
    document.querySelectorAll("[data-live]").forEach(follow);
    tick();
    setInterval(tick, 1000);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
