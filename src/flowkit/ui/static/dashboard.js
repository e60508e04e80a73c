// The dashboard's few behaviours: live lists, confirmations, and actions sent
// with the page's CSRF token. No framework, no build step.
"use strict";

const REFRESH_MS = 3000;
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function notice(text, ok) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = ok ? "good" : "bad";
}

async function post(url, fields) {
  const body = new URLSearchParams(fields);
  const response = await fetch(url, {
    method: "POST",
    headers: { "x-csrf-token": csrf() },
    body,
    credentials: "same-origin",
  });
  let data = { ok: response.ok, message: response.statusText };
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  return data;
}

// -- live: the part marked data-refresh is fetched again every few seconds ------------
let busy = false;
async function refresh() {
  const live = document.querySelector("[data-refresh]");
  if (!live || document.hidden || busy || live.querySelector(":checked, details[open]")) return;
  try {
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.querySelector("[data-refresh]");
    if (fresh && !busy) live.innerHTML = fresh.innerHTML;
  } catch (e) { /* the server is restarting: try again later */ }
}
setInterval(refresh, REFRESH_MS);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

// -- actions ---------------------------------------------------------------------------
async function act(button) {
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  busy = true;
  button.disabled = true;
  try {
    if (button.dataset.action) {
      const data = await post(button.dataset.action, { action: button.dataset.fieldAction });
      notice(data.message, data.ok);
    } else if (button.dataset.one) {
      const data = await post(`/dead-letters/${button.dataset.one}`, { id: button.dataset.id });
      notice(data.message, data.ok);
    } else if (button.dataset.bulk) {
      await bulk(button);
    }
  } finally {
    busy = false;
    button.disabled = false;
    refresh();
  }
}

// Replay or delete letters one request at a time, showing how far it got.
async function bulk(button) {
  const group = button.closest(".group");
  const boxes = [...group.querySelectorAll('input[type="checkbox"]')];
  const ids = boxes.filter((b) => "all" in button.dataset || b.checked).map((b) => b.value);
  const progress = group.querySelector(".progress");
  if (!ids.length) { notice("select dead letters first", false); return; }
  const verb = button.dataset.bulk === "replay" ? "replayed" : "deleted";
  let done = 0;
  for (const id of ids) {
    const data = await post(`/dead-letters/${button.dataset.bulk}`, { id });
    if (!data.ok) { notice(data.message, false); progress.textContent = `${done} of ${ids.length} ${verb}`; return; }
    done += 1;
    progress.textContent = `${done} of ${ids.length} ${verb}`;
  }
  for (const b of boxes) b.checked = false;
  notice(`${verb} ${done} dead letter(s)`, true);
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action], button[data-one], button[data-bulk]");
  if (button) { event.preventDefault(); act(button); }
});
