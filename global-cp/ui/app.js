// Causeway's web UI: a small client without a framework or a build step. It signs in
// with an API token (kept in this tab's sessionStorage), reads the same REST API the
// CLI uses, and builds the page with DOM calls only: text from the API is never parsed
// as HTML, and the Content-Security-Policy allows no inline script.
"use strict";

const TOKEN_KEY = "causeway.token";
const REFRESH_MS = 5000;
let refreshTimer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// A GET of the API; throws an Error carrying the API's own message and the status.
async function api(path, tok) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + (tok || token()) } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(body.message || r.status + " " + r.statusText);
    err.status = r.status;
    throw err;
  }
  return body;
}

function setStatus(text) { document.getElementById("status").textContent = text; }

function showSignIn(message) {
  clearInterval(refreshTimer);
  document.getElementById("signin").hidden = false;
  document.getElementById("view").hidden = true;
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("token").focus();
}

function showView() {
  document.getElementById("signin").hidden = true;
  document.getElementById("view").hidden = false;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
}

function table(caption, headers, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("div", { class: "table-wrap", role: "region", "aria-label": caption, tabindex: 0 },
    el("table", {},
      el("caption", { class: "sr-only" }, caption),
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}

function card(n, label, id) {
  return el("div", { class: "card", id }, el("span", { class: "n" }, n), el("span", { class: "l" }, label));
}

function renderOverview(o) {
  const t = o.totals;
  const zoneRows = o.zones.map((z) => [
    z.name,
    el("span", { class: z.online ? "ok" : "bad" }, z.online ? "online" : "offline"),
    z.lag === null || z.lag === undefined ? "-" : String(z.lag),
    z.version || "-",
    z.lastSeen || "never",
    String(z.dataplanes),
  ]);
  const meshRows = o.meshes.map((m) => [m.name, m.mtls, String(m.services), String(m.dataplanes), String(m.policies)]);
  const drillRows = o.drills.map((d) => [d.name, d.zone, d.state, new Date(d.endsAt * 1000).toISOString()]);
  const view = document.getElementById("view");
  view.replaceChildren(
    el("h1", {}, "Overview"),
    el("div", { class: "cards" },
      card(t.zonesOnline + " / " + t.zones, "zones online", "count-zones"),
      card(t.meshes, "meshes", "count-meshes"),
      card(t.services, "services", "count-services"),
      card(t.dataplanes, "dataplanes", "count-dataplanes"),
      card(t.policies, "policies", "count-policies")),
    el("h2", { id: "warnings-title" }, "Warnings"),
    o.warnings.length
      ? el("ul", { class: "warnings", id: "warnings", "aria-labelledby": "warnings-title" },
        o.warnings.map((w) => el("li", { "data-kind": w.kind }, w.text)))
      : el("p", { class: "empty", id: "warnings" }, "Nothing needs attention."),
    el("h2", {}, "Zones"),
    table("Zones", ["Zone", "Status", "KDS lag", "Version", "Last seen", "Dataplanes"], zoneRows, "No zones yet: create one with causeway zone token create."),
    el("h2", {}, "Meshes"),
    table("Meshes", ["Mesh", "mTLS", "Services", "Dataplanes", "Policies"], meshRows, "No meshes yet."),
    el("h2", {}, "Drills running"),
    table("Drills", ["Drill", "Zone", "State", "Ends"], drillRows, "No drill is running."),
  );
}

async function refresh() {
  try {
    renderOverview(await api("/overview"));
    setStatus("Updated " + new Date().toLocaleTimeString());
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(e.message);
    } else {
      setStatus("Could not refresh: " + e.message);
    }
  }
}

async function route() {
  if (!token()) return showSignIn();
  showView();
  document.getElementById("nav-overview").setAttribute("aria-current", "page");
  await refresh();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token");
    const tok = input.value.trim();
    try {
      await api("/overview", tok);
    } catch (e) {
      document.getElementById("signin-error").textContent = "Sign-in refused: " + e.message;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, tok);
    input.value = "";
    await route();
    document.getElementById("main").focus();
  });
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn();
  });
  window.addEventListener("hashchange", route);
  route();
});
