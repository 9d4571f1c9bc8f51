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
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// A call of the API; throws an Error carrying the API's own message, its field errors
// and the status. `opts.accept` "yaml" returns the body as text.
async function api(path, tok, opts) {
  opts = opts || {};
  const headers = { Authorization: "Bearer " + (tok || token()) };
  if (opts.accept === "yaml") headers.Accept = "application/yaml";
  if (opts.body !== undefined) headers["Content-Type"] = "application/yaml";
  const r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body });
  if (r.ok && opts.accept === "yaml") return r.text();
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(body.message || r.status + " " + r.statusText);
    err.status = r.status;
    err.errors = body.errors || [];
    throw err;
  }
  return body;
}

// Who the token belongs to (GET /whoami), read once per sign-in.
let me = null;

function mayEdit(mesh) {
  if (!me) return false;
  return me.role === "admin" || (me.role === "mesh-editor" && (me.meshes || []).includes(mesh));
}

function setStatus(text) { document.getElementById("status").textContent = text; }

function showSignIn(message) {
  clearInterval(refreshTimer);
  me = null;
  document.getElementById("who").textContent = "";
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

function link(href, text) { return el("a", { href }, text); }

function enc(s) { return encodeURIComponent(s); }

function card(n, label, id) {
  return el("div", { class: "card", id }, el("span", { class: "n" }, n), el("span", { class: "l" }, label));
}

function renderOverview(o) {
  const t = o.totals;
  const zoneRows = o.zones.map((z) => [
    link("#/zones/" + enc(z.name), z.name),
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

// The pages: each reads what it shows and renders it into #view; the overview also
// refreshes every few seconds while the tab is visible.
const pages = [
  { re: /^#\/zones\/([^/]+)$/, nav: "zones", render: (m) => zonePage(decodeURIComponent(m[1])) },
  { re: /^#\/zones$/, nav: "zones", render: zonesPage },
  { re: /^#\/policies\/([^/]+)\/([^/]+)\/([^/]+)$/, nav: "policies",
    render: (m) => policyPage(decodeURIComponent(m[1]), decodeURIComponent(m[2]), decodeURIComponent(m[3])) },
  { re: /^#\/policies$/, nav: "policies", render: policiesPage },
  { re: /^/, nav: "overview", render: async () => renderOverview(await api("/overview")), refresh: true },
];

async function show(page, match) {
  try {
    await page.render(match);
    setStatus("Updated " + new Date().toLocaleTimeString());
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(e.message);
    } else {
      setStatus("Could not load: " + e.message);
    }
  }
}

async function route() {
  if (!token()) return showSignIn();
  if (!me) {
    try {
      me = await api("/whoami");
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn(e.message);
    }
    document.getElementById("who").textContent = me.name + " (" + me.role + ")";
  }
  showView();
  const hash = location.hash || "#/overview";
  const page = pages.find((p) => p.re.test(hash));
  const match = hash.match(page.re);
  for (const a of document.querySelectorAll("nav a")) {
    if (a.id === "nav-" + page.nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  clearInterval(refreshTimer);
  await show(page, match);
  if (page.refresh) {
    refreshTimer = setInterval(() => { if (!document.hidden) show(page, match); }, REFRESH_MS);
  }
}

function dl(pairs) {
  return el("dl", { class: "facts" }, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null || v === undefined || v === "" ? "-" : v)]));
}

// Every item of a mesh-scoped list, following `next` pages.
async function listAll(path) {
  let items = [];
  let after = null;
  for (;;) {
    const page = await api(path + "?limit=1000" + (after ? "&after=" + enc(after) : ""));
    items = items.concat(page.items || []);
    if (!page.next) return items;
    after = page.next;
  }
}

async function zonesPage() {
  const zones = (await api("/zones?limit=1000")).items;
  const rows = zones.map((z) => [
    link("#/zones/" + enc(z.name), z.name),
    el("span", { class: z.status.online ? "ok" : "bad" }, z.status.online ? "online" : "offline"),
    z.status.lag === undefined ? "-" : String(z.status.lag),
    z.status.version || "-",
    z.status.lastSeen || "never",
    String(z.status.connectedProxies || 0),
  ]);
  document.getElementById("view").replaceChildren(
    el("h1", {}, "Zones"),
    table("Zones", ["Zone", "Status", "KDS lag", "Version", "Last seen", "Proxies connected"], rows, "No zones yet."));
}

async function zonePage(name) {
  const z = await api("/zones/" + enc(name));
  const s = z.status || {};
  const meshes = (await api("/meshes?limit=1000")).items;
  const dataplanes = [];
  const ingresses = [];
  for (const m of meshes) {
    for (const d of await listAll("/meshes/" + enc(m.name) + "/dataplanes")) if (d.origin === name) dataplanes.push(d);
    for (const i of await listAll("/meshes/" + enc(m.name) + "/zoneingresses")) if (i.origin === name) ingresses.push(i);
  }
  const services = new Set();
  for (const d of dataplanes) for (const i of d.spec.inbound || []) services.add(d.mesh + "/" + i.service);
  document.getElementById("view").replaceChildren(
    el("h1", {}, "Zone " + name),
    el("h2", {}, "KDS"),
    dl([
      ["Status", el("span", { class: s.online ? "ok" : "bad" }, s.online ? "online" : "offline")],
      ["Connected to node", s.connectedTo],
      ["Connected since", s.connectedSince],
      ["Last seen", s.lastSeen],
      ["Revision applied", s.revisionApplied],
      ["KDS lag (changes)", s.lag],
      ["Last sync", s.lastSync ? s.lastSync.changes + " changes" + (s.lastSync.full ? " (full)" : "") : null],
      ["Last config push", s.lastConfigPush],
      ["Version", s.version],
    ]),
    el("h2", {}, "Ingresses"),
    table("Ingresses", ["Ingress", "Mesh", "Address", "Advertised"],
      ingresses.map((i) => [i.name, i.mesh, i.spec.address + ":" + i.spec.port,
        i.spec.advertisedAddress ? i.spec.advertisedAddress + ":" + (i.spec.advertisedPort || i.spec.port) : "-"]),
      "No ingress registered in this zone."),
    el("h2", {}, "Dataplanes"),
    table("Dataplanes", ["Dataplane", "Mesh", "Address", "Services"],
      dataplanes.map((d) => [d.name, d.mesh, d.spec.address, (d.spec.inbound || []).map((i) => i.service).join(", ")]),
      "No dataplane registered in this zone."),
    el("h2", {}, "Services"),
    services.size ? el("ul", { id: "zone-services" }, [...services].sort().map((x) => el("li", {}, x)))
      : el("p", { class: "empty" }, "No services."));
}

async function policiesPage() {
  const o = await api("/overview");
  const rows = [];
  for (const m of o.meshes) {
    for (const t of o.policyTypes) {
      if (!m.policiesByKind[t.kind]) continue;
      for (const p of await listAll("/meshes/" + enc(m.name) + "/" + t.plural)) {
        rows.push([t.kind, m.name, link("#/policies/" + enc(m.name) + "/" + t.plural + "/" + enc(p.name), p.name),
          p.origin || "global", p.modificationTime || "-"]);
      }
    }
  }
  document.getElementById("view").replaceChildren(
    el("h1", {}, "Policies"),
    table("Policies", ["Kind", "Mesh", "Name", "Origin", "Changed"], rows, "No policies yet."));
}

async function policyPage(mesh, plural, name) {
  const path = "/meshes/" + enc(mesh) + "/" + plural + "/" + enc(name);
  const yaml = await api(path, null, { accept: "yaml" });
  const o = await api("/overview");
  const kind = (o.policyTypes.find((t) => t.plural === plural) || {}).kind || plural;
  const subject = kind + "/" + mesh + "/" + name;
  const warnings = o.warnings.filter((w) => w.subject === subject);
  const parts = [
    el("h1", {}, kind + " " + name),
    dl([["Mesh", mesh], ["Kind", kind]]),
    warnings.length ? el("ul", { class: "warnings" }, warnings.map((w) => el("li", {}, w.text))) : null,
  ];
  if (mayEdit(mesh)) {
    const area = el("textarea", { id: "policy-yaml", rows: 18, spellcheck: "false", "aria-describedby": "policy-errors" });
    area.value = yaml;
    const errors = el("div", { id: "policy-errors", role: "alert" });
    const form = el("form", { id: "policy-form" },
      el("label", { for: "policy-yaml" }, "Policy (YAML)"), area,
      el("button", { type: "submit" }, "Apply"), errors);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      errors.replaceChildren();
      try {
        await api(path, null, { method: "PUT", body: area.value });
        errors.replaceChildren(el("p", { class: "ok", id: "policy-applied" }, "Applied."));
        area.value = await api(path, null, { accept: "yaml" });
      } catch (e) {
        errors.replaceChildren(
          el("p", { class: "error" }, "Not applied: " + e.message),
          e.errors.length ? el("ul", { class: "field-errors" },
            e.errors.map((f) => el("li", {}, el("code", {}, f.field || "(resource)"), ": " + f.reason))) : null);
      }
    });
    parts.push(form);
  } else {
    parts.push(el("pre", { id: "policy-yaml", tabindex: 0 }, yaml));
  }
  document.getElementById("view").replaceChildren(...parts);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token");
    const tok = input.value.trim();
    try {
      await api("/whoami", tok);
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
