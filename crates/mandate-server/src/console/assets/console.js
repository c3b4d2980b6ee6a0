// Mandate console: counts down time left and redraws the live lists when the server says they
// changed (server-sent events from /console/events). Pages work without it.
"use strict";
(function () {
  function left(ms) {
    if (ms <= 0) return "expired";
    var s = Math.floor(ms / 1000), m = Math.floor(s / 60), h = Math.floor(m / 60);
    if (h > 0) return h + "h " + (m % 60) + "m left";
    if (m > 0) return m + "m " + (s % 60) + "s left";
    return s + "s left";
  }
  function tick() {
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      el.textContent = left(Number(el.getAttribute("data-expires")) - Date.now());
    });
  }
  tick();
  setInterval(tick, 1000);

  var live = document.querySelectorAll("[data-live]");
  if (!live.length || !window.EventSource) return;
  function redraw(el) {
    // Never pull a form out from under someone typing in it: redraw once they leave it.
    if (el.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
      el.setAttribute("data-stale", "1");
      return;
    }
    el.removeAttribute("data-stale");
    fetch(el.getAttribute("data-live"), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.href = "/console/login?error=expired"; }
        if (!r.ok) throw new Error(String(r.status));
        return r.text();
      })
      .then(function (html) { el.innerHTML = html; tick(); })
      .catch(function () {});
  }
  var es = new EventSource("/console/events");
  live.forEach(function (el) {
    es.addEventListener(el.getAttribute("data-topic"), function () { redraw(el); });
    el.addEventListener("focusout", function () {
      if (el.getAttribute("data-stale")) setTimeout(function () { redraw(el); }, 200);
    });
  });
  document.body.setAttribute("data-live-ready", "1");
})();
