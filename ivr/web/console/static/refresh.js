// Pages that watch live data (Calls, a call's journey, Verifications) refresh their parts
// marked data-refresh, every data-refresh-seconds, from the same URL: the server renders, this
// only swaps the marked elements by id. It pauses while the tab is hidden, while the focus is
// inside a part (a keyboard user keeps their place), and when the user presses Pause; it stops
// when the session has ended.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const parts = [...document.querySelectorAll("[data-refresh][id]")];
  const control = document.getElementById("refresh-control");
  if (!parts.length || !control) return;
  const status = control.querySelector("[data-refresh-status]");
  const toggle = control.querySelector("button");
  const seconds = Math.max(2, Number(parts[0].dataset.refreshSeconds) || 5);
  let paused = false;
  let timer = null;

  const say = (text) => { status.textContent = text; };
  const stamp = () => new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  async function refresh() {
    if (paused || document.hidden) return;
    let response;
    try {
      response = await fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch (error) {
      say(`Not updated: the server did not answer (${stamp()})`);
      return;
    }
    if (response.redirected || response.status === 401) {
      clearInterval(timer);
      say("Updates stopped: you are signed out. Reload the page to sign in.");
      toggle.disabled = true;
      return;
    }
    if (!response.ok) { say(`Not updated: the server answered ${response.status} (${stamp()})`); return; }
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const part of parts) {
      const replacement = fresh.getElementById(part.id);
      if (!replacement || part.contains(document.activeElement)) continue;
      part.replaceChildren(...replacement.childNodes);
    }
    say(`Updated at ${stamp()}`);
  }

  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.textContent = paused ? "Resume updates" : "Pause updates";
    toggle.setAttribute("aria-pressed", String(paused));
    say(paused ? "Updates paused" : `Updates every ${seconds} s`);
    if (!paused) refresh();
  });
  control.hidden = false;
  say(`Updates every ${seconds} s`);
  timer = setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
});
