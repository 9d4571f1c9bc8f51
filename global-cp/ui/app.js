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
  if (opts.body !== undefined) headers["Content-Type"] = opts.body.trimStart().startsWith("{") ? "application/json" : "application/yaml";
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

// The policy kinds and their paths (static for a binary), read once.
let typesCache = null;
async function policyTypes() {
  if (!typesCache) typesCache = await (await fetch("/ui/types.json")).json();
  return typesCache;
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

// Replaces the page's content; absent parts (null) are skipped. Pages return their
// parts and `show` renders them, unless the user went elsewhere meanwhile.
function render(...parts) {
  document.getElementById("view").replaceChildren(...parts.flat(Infinity).filter((p) => p !== null && p !== undefined && p !== false));
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
  const drillRows = o.drills.map((d) => [link("#/drills/" + enc(d.name), d.name), d.zone, d.state, new Date(d.endsAt * 1000).toISOString()]);
  return [
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
  ];
}

// The pages: each reads what it shows and renders it into #view; the overview also
// refreshes every few seconds while the tab is visible.
const pages = [
  { re: /^#\/zones\/([^/]+)$/, nav: "zones", render: (m) => zonePage(decodeURIComponent(m[1])) },
  { re: /^#\/zones$/, nav: "zones", render: zonesPage },
  { re: /^#\/policies\/([^/]+)\/([^/]+)\/([^/]+)$/, nav: "policies",
    render: (m) => policyPage(decodeURIComponent(m[1]), decodeURIComponent(m[2]), decodeURIComponent(m[3])) },
  { re: /^#\/policies$/, nav: "policies", render: policiesPage },
  { re: /^#\/drills\/([^/]+)$/, nav: "drills", refresh: true, render: (m) => drillPage(decodeURIComponent(m[1])) },
  { re: /^#\/drills$/, nav: "drills", refresh: true, render: drillsPage },
  { re: /^#\/dataplanes\/([^/]+)\/([^/]+)$/, nav: "dataplanes",
    render: (m) => dataplanePage(decodeURIComponent(m[1]), decodeURIComponent(m[2])) },
  { re: /^#\/dataplanes(?:\/([^/?]+))?(?:\?after=([^&]*))?$/, nav: "dataplanes",
    render: (m) => dataplanesPage(m[1] && decodeURIComponent(m[1]), m[2] ? decodeURIComponent(m[2]) : "") },
  { re: /^#\/services\/([^/]+)\/([^/]+)$/, nav: "services", refresh: true,
    render: (m) => servicePage(decodeURIComponent(m[1]), decodeURIComponent(m[2])) },
  { re: /^#\/services(?:\/([^/]+))?$/, nav: "services", refresh: true, render: (m) => servicesPage(m[1] && decodeURIComponent(m[1])) },
  { re: /^#\/topology(?:\/([^/?]+))?(?:\?zone=([^&]*))?$/, nav: "topology", refresh: true,
    render: (m) => topologyPage(m[1] && decodeURIComponent(m[1]), m[2] ? decodeURIComponent(m[2]) : "") },
  { re: /^/, nav: "overview", render: async () => renderOverview(await api("/overview")), refresh: true },
];

let showSeq = 0;

async function show(page, match) {
  const seq = ++showSeq;
  try {
    const parts = await page.render(match);
    // A slower answer for a page (or a refresh) the user has left is dropped.
    if (seq !== showSeq) return;
    render(parts);
    // For benches and tests that time a page: it is on screen now.
    window.dispatchEvent(new CustomEvent("causeway:rendered", { detail: location.hash }));
    setStatus("Updated " + new Date().toLocaleTimeString());
  } catch (e) {
    if (seq !== showSeq) return;
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
    const page = await api(path + (path.includes("?") ? "&" : "?") + "limit=1000" + (after ? "&after=" + enc(after) : ""));
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
  return [
    el("h1", {}, "Zones"),
    table("Zones", ["Zone", "Status", "KDS lag", "Version", "Last seen", "Proxies connected"], rows, "No zones yet.")];
}

async function zonePage(name) {
  // The zone's own recent history (its last change sets), asked over its KDS stream.
  const dump = api("/zones/" + enc(name) + "/config-dump").catch((e) => ({ error: e.message }));
  const z = await api("/zones/" + enc(name));
  const s = z.status || {};
  const meshes = (await api("/meshes?limit=1000")).items;
  const dataplanes = [];
  const ingresses = [];
  for (const m of meshes) {
    const only = "?origin=" + enc(name);
    dataplanes.push(...await listAll("/meshes/" + enc(m.name) + "/dataplanes" + only));
    ingresses.push(...await listAll("/meshes/" + enc(m.name) + "/zoneingresses" + only));
  }
  const services = new Set();
  for (const d of dataplanes) for (const i of d.spec.inbound || []) services.add(d.mesh + "/" + i.service);
  return [
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
    el("h2", {}, "KDS history"),
    await dump.then((d) => d.error
      ? el("p", { class: "empty", id: "kds-history" }, "The zone could not be asked: " + d.error)
      : el("div", { id: "kds-history" }, table("Change sets applied", ["Applied", "Revision", "Changes", "Kind", "Bytes", "Messages"],
        [...((d.status && d.status.syncs) || [])].reverse().map((x) => [new Date(x.atUnixMs).toISOString(), String(x.revision),
          String(x.changes), x.full ? "full" : "delta", String(x.bytes), String(x.messages)]), "No change set applied since the zone started."))),
    el("h2", {}, "Ingresses"),
    table("Ingresses", ["Ingress", "Mesh", "Address", "Advertised"],
      ingresses.map((i) => [i.name, i.mesh, i.spec.address + ":" + i.spec.port,
        i.spec.advertisedAddress ? i.spec.advertisedAddress + ":" + (i.spec.advertisedPort || i.spec.port) : "-"]),
      "No ingress registered in this zone."),
    el("h2", {}, "Dataplanes"),
    table("Dataplanes", ["Dataplane", "Mesh", "Address", "Services"],
      dataplanes.map((d) => [dpLink(d.mesh, d.name), d.mesh, d.spec.address, (d.spec.inbound || []).map((i) => i.service).join(", ")]),
      "No dataplane registered in this zone."),
    el("h2", {}, "Services"),
    services.size ? el("ul", { id: "zone-services" }, [...services].sort().map((x) => el("li", {}, x)))
      : el("p", { class: "empty" }, "No services.")];
}

// Golden signals: what the zones' sidecars counted in the last minute
// (`GET /meshes/{mesh}/stats`, the same as `causeway stat`).
async function stats(mesh, by, service, zone) {
  let q = "?window=1m&by=" + by;
  if (service) q += "&service=" + enc(service);
  if (zone) q += "&zone=" + enc(zone);
  return (await api("/meshes/" + enc(mesh) + "/stats" + q)).rows || [];
}

function pct(x) { return x === null || x === undefined ? "-" : (x * 100).toFixed(1) + "%"; }
function ms(x) { return x === null || x === undefined ? "-" : x.toFixed(1) + " ms"; }
function rps(x) { return (x || 0).toFixed(1); }

// The meshes, and the one a page is about (the first when none is named).
async function pickMesh(mesh) {
  const meshes = (await api("/meshes?limit=1000")).items.map((m) => m.name);
  return { meshes, mesh: mesh || meshes[0] };
}

function meshLinks(meshes, current, base) {
  if (meshes.length < 2) return null;
  return el("p", {}, "Mesh: ", meshes.map((m) => [m === current ? el("strong", {}, m) : link(base + enc(m), m), " "]));
}

async function servicesPage(mesh) {
  const pick = await pickMesh(mesh);
  if (!pick.mesh) return [el("h1", {}, "Services"), el("p", { class: "empty" }, "No meshes yet.")];
  const instances = {};
  for (const x of (await api("/meshes/" + enc(pick.mesh) + "/services")).items) instances[x.service] = x.zones;
  const rows = await stats(pick.mesh, "service");
  const byName = Object.fromEntries(rows.map((r) => [r.service, r]));
  const names = [...new Set([...Object.keys(instances), ...Object.keys(byName)])].sort();
  return [
    el("h1", {}, "Services"),
    meshLinks(pick.meshes, pick.mesh, "#/services/"),
    table("Services", ["Service", "Instances by zone", "Requests/s", "Success", "p99"], names.map((n) => {
      const r = byName[n] || {};
      const z = instances[n] || {};
      return [link("#/services/" + enc(pick.mesh) + "/" + enc(n), n),
        Object.keys(z).sort().map((k) => k + ": " + z[k]).join(", ") || "-",
        rps(r.requestsPerSecond), pct(r.successRate), ms(r.p99Ms)];
    }), "No services yet.")];
}

async function servicePage(mesh, service) {
  const [svc, zones, callers, callees, types] = await Promise.all([
    api("/meshes/" + enc(mesh) + "/services/" + enc(service)).catch((e) => (e.status === 404 ? { instances: [], policies: [] } : Promise.reject(e))),
    stats(mesh, "zone", service), stats(mesh, "caller", service), stats(mesh, "callee", service),
    policyTypes()]);
  const plural = (kind) => (types.find((t) => t.kind === kind) || {}).plural;
  const targeting_ = svc.policies.map((p) => [p.kind, link("#/policies/" + enc(mesh) + "/" + plural(p.kind) + "/" + enc(p.name), p.name), p.applies.join(", ")]);
  const peerRows = (rows) => rows.map((r) => [r.peer || "-", r.peerZone || "-", rps(r.requestsPerSecond), pct(r.successRate), ms(r.p99Ms)]);
  return [
    el("h1", {}, "Service " + service),
    dl([["Mesh", mesh]]),
    el("h2", {}, "Instances"),
    table("Instances", ["Dataplane", "Zone", "Address", "Health", "As its callers see it"], svc.instances.map((i) => [dpLink(mesh, i.dataplane), i.zone,
      i.address + ":" + (i.ports || []).join(","),
      el("span", { class: "health " + ({ healthy: "ok", degraded: "warn", out: "bad" }[i.health && i.health.state] || "empty") }, i.health ? i.health.state : "-"),
      i.health ? i.health.why : "-"]), "No instance registered."),
    el("h2", {}, "Golden signals by zone (last minute)"),
    table("Golden signals by zone", ["Zone", "Requests/s", "Success", "p50", "p99"],
      zones.map((r) => [r.zone || "-", rps(r.requestsPerSecond), pct(r.successRate), ms(r.p50Ms), ms(r.p99Ms)]), "No requests in the last minute."),
    el("h2", {}, "Callers"),
    table("Callers", ["Caller", "Caller's zone", "Requests/s", "Success", "p99"], peerRows(callers), "No callers in the last minute."),
    el("h2", {}, "Callees"),
    table("Callees", ["Callee", "Callee's zone", "Requests/s", "Success", "p99"], peerRows(callees), "No calls out in the last minute."),
    el("h2", {}, "Policies that target it"),
    table("Policies", ["Kind", "Name", "Applies to"], targeting_, "No policy configures its traffic.")];
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// The service graph: a node per service, an edge per caller -> callee with its rate,
// success and p99 over the last minute; cross-zone edges dashed. Drawn on a circle:
// a mesh's services are few enough, and the layout stays stable between refreshes.
async function topologyPage(mesh, zone) {
  const pick = await pickMesh(mesh);
  if (!pick.mesh) return [el("h1", {}, "Topology"), el("p", { class: "empty" }, "No meshes yet.")];
  const [rows, zoneList] = await Promise.all([
    stats(pick.mesh, "callee", null, zone).then((r) => r.filter((x) => x.peer)),
    api("/zones?limit=1000")]);
  const names = [...new Set(rows.flatMap((r) => [r.service, r.peer]))].sort();
  const size = 560, c = size / 2, radius = names.length > 1 ? size / 2 - 80 : 0;
  const at = {};
  names.forEach((n, i) => {
    const a = (2 * Math.PI * i) / names.length - Math.PI / 2;
    at[n] = [c + radius * Math.cos(a), c + radius * Math.sin(a)];
  });
  const edges = rows.map((r) => {
    const [x1, y1] = at[r.service], [x2, y2] = at[r.peer];
    const cross = !!r.peerZone && Object.keys(r.zones || {}).some((z) => z !== r.peerZone);
    const label = rps(r.requestsPerSecond) + " rps · " + pct(r.successRate) + " · p99 " + ms(r.p99Ms);
    return svg("g", { class: "edge" + (cross ? " cross" : ""), "data-from": r.service, "data-to": r.peer, "data-peer-zone": r.peerZone || "" },
      svg("title", {}, r.service + " → " + r.peer + (r.peerZone ? " in " + r.peerZone : "") + (cross ? " (cross-zone)" : "") + ": " + label),
      svg("line", { x1, y1, x2, y2, "marker-end": "url(#arrow)" }),
      svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" }, label + (cross ? " · cross-zone" : "")));
  });
  const nodes = names.map((n) => svg("a", { href: "#/services/" + enc(pick.mesh) + "/" + enc(n), class: "node", "data-service": n },
    svg("circle", { cx: at[n][0], cy: at[n][1], r: 26 }),
    svg("text", { x: at[n][0], y: at[n][1] + 44, "text-anchor": "middle" }, n)));
  const zoneSelect = el("select", { id: "topology-zone", "aria-label": "Zone" },
    el("option", { value: "" }, "All zones"), zoneList.items.map((z) => el("option", { value: z.name, selected: z.name === zone }, z.name)));
  zoneSelect.addEventListener("change", () => {
    location.hash = "#/topology/" + enc(pick.mesh) + (zoneSelect.value ? "?zone=" + enc(zoneSelect.value) : "");
  });
  return [
    el("h1", {}, "Topology"),
    meshLinks(pick.meshes, pick.mesh, "#/topology/"),
    el("p", {}, el("label", { for: "topology-zone" }, "Zone "), zoneSelect),
    names.length
      ? el("div", { class: "graph" }, svg("svg", { viewBox: "0 0 " + size + " " + size, role: "img", "aria-label": "Calls between the services of mesh " + pick.mesh + " in the last minute", id: "topology" },
        svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 36, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }))),
        edges, nodes))
      : el("p", { class: "empty" }, "No calls between services in the last minute."),
    el("p", { class: "empty" }, "Dashed: calls answered in another zone. Select a service to open it.")];
}

function dpLink(mesh, name) { return link("#/dataplanes/" + enc(mesh) + "/" + enc(name), name); }

function when(unixMs) { return unixMs ? new Date(unixMs).toISOString() : null; }

// A page of a mesh's Dataplanes at a time: a mesh may hold tens of thousands.
const DATAPLANES_PER_PAGE = 200;

async function dataplanesPage(mesh, after) {
  const pick = await pickMesh(mesh);
  if (!pick.mesh) return [el("h1", {}, "Dataplanes"), el("p", { class: "empty" }, "No meshes yet.")];
  const page = await api("/meshes/" + enc(pick.mesh) + "/dataplanes?limit=" + DATAPLANES_PER_PAGE + (after ? "&after=" + enc(after) : ""));
  return [
    el("h1", {}, "Dataplanes"),
    meshLinks(pick.meshes, pick.mesh, "#/dataplanes/"),
    table("Dataplanes", ["Dataplane", "Zone", "Address", "Services"],
      page.items.map((d) => [dpLink(pick.mesh, d.name), d.origin || "-", d.spec.address, (d.spec.inbound || []).map((i) => i.service).join(", ")]),
      "No dataplane registered."),
    el("p", {}, after ? [link("#/dataplanes/" + enc(pick.mesh), "First page"), " "] : null,
      page.next ? link("#/dataplanes/" + enc(pick.mesh) + "?after=" + enc(page.next), "Next page") : null)];
}

// One policy kind's merged configuration, as JSON, with the policies behind it.
function merged(kind, m) {
  return el("div", { class: "merged" },
    el("p", {}, el("strong", {}, kind), " from ", (m.policies || []).join(", ") || "-"),
    el("pre", { tabindex: 0 }, JSON.stringify(m.conf, null, 2)));
}

async function dataplanePage(mesh, name) {
  const dp = await api("/meshes/" + enc(mesh) + "/dataplanes/" + enc(name));
  let ins = null;
  let insError = null;
  try {
    ins = await api("/meshes/" + enc(mesh) + "/dataplanes/" + enc(name) + "/inspect");
  } catch (e) {
    insError = e.message;
  }
  const parts = [
    el("h1", {}, "Dataplane " + name),
    dl([["Mesh", mesh], ["Zone", dp.origin], ["Address", dp.spec.address],
      ["Inbounds", (dp.spec.inbound || []).map((i) => i.service + " :" + i.port).join(", ")],
      ["Outbounds", (dp.spec.outbound || []).map((o) => o.service + " :" + o.port).join(", ")]]),
  ];
  if (!ins) {
    parts.push(el("p", { class: "error", id: "inspect-error" }, "Its zone could not be asked: " + insError));
    return [parts];
  }
  const p = ins.proxy;
  const cert = p && p.certificate;
  parts.push(
    el("h2", {}, "Proxy"),
    p ? dl([
      ["Connected since", when(p.connectedUnixMs)],
      ["Config computed", ins.config.version || ("error: " + ins.config.error)],
      ["Config sent", p.sentVersion],
      ["Accepted (ACK)", p.ack ? p.ack.version + " at " + when(p.ack.atUnixMs) : null],
      ["Rejected (NACK)", p.nack ? el("span", { class: "bad", id: "nack" }, p.nack.version + ": " + (p.nack.reason || "")) : el("span", { class: "ok", id: "nack" }, "none")],
      ["Certificate", cert ? cert.identity : null],
      ["Certificate expires", cert ? new Date(cert.notAfter * 1000).toISOString() : null],
      ["Renews at", cert ? new Date(cert.renewAt * 1000).toISOString() : null],
    ]) : el("p", { class: "bad" }, "No sidecar of that name is connected to zone " + ins.zone + " now."),
    el("h2", {}, "Inbounds"),
    ins.inbounds.map((i) => el("section", { class: "inbound", "aria-label": "Inbound " + i.service + " :" + i.port },
      el("h3", {}, i.service + " :" + i.port),
      i.policies.length ? i.policies.map((k) => k.rules.map((r) => merged(k.kind + " (from " + (r.source.name || r.source.kind) + ")", r)))
        : el("p", { class: "empty" }, "No policy configures it."))),
    el("h2", {}, "Outbounds"),
    ins.outbounds.map((o) => el("section", { class: "outbound", "aria-label": "Outbound " + o.service + " :" + o.port },
      el("h3", {}, o.service + " :" + o.port),
      table("Endpoints of " + o.service, ["Endpoint", "Zone", "Health", "Why out"],
        (o.destinations || []).flatMap((d) => d.endpoints.map((e) => [e.address + ":" + e.port, e.zone || "-",
          el("span", { class: e.healthy ? "ok" : "bad" }, e.healthy ? "healthy" : "out"),
          e.ejection ? e.ejection.reason : "-"])),
        "The proxy has not reported its endpoints yet."),
      o.policies.map((k) => [k.conf ? merged(k.kind, k.conf) : null,
        Object.entries(k.routes || {}).map(([route, m]) => merged(k.kind + " (route " + route + ")", m))]))),
    ins.proxyPolicies && ins.proxyPolicies.length ? [el("h2", {}, "Proxy-wide"), ins.proxyPolicies.map((k) => merged(k.kind, k))] : null,
    (ins.unmatched || []).length ? [el("h2", {}, "Policies that match nothing here"),
      table("Unmatched policies", ["Kind", "Name", "Why"], ins.unmatched.map((n) => [n.kind, n.name, n.reason || "-"]), "")] : null,
    (ins.warnings || []).length ? [el("h2", {}, "Not enforced"),
      el("ul", { class: "warnings" }, ins.warnings.flatMap((w) => w.warnings.map((f) => el("li", {}, w.kind + " " + w.name + ": " + f.field + ": " + f.reason))))] : null);
  return [parts];
}

// Drills: `Drill` resources (global) and the `DrillReport`s the probing zones write.
function drillEnd(d) {
  const stop = d.spec.stoppedAt ? Date.parse(d.spec.stoppedAt) : Infinity;
  return Math.max(Date.parse(d.spec.startsAt), Math.min(Date.parse(d.spec.endsAt), stop));
}

function drillState(d) {
  const now = Date.now();
  if (now < Date.parse(d.spec.startsAt)) return "starting";
  if (now < drillEnd(d)) return "running";
  return d.spec.stoppedAt && Date.parse(d.spec.stoppedAt) < Date.parse(d.spec.endsAt) ? "stopped" : "ended";
}

async function drillsPage() {
  const drills = (await api("/drills?limit=1000")).items
    .sort((a, b) => Date.parse(b.spec.startsAt) - Date.parse(a.spec.startsAt));
  const parts = [
    el("h1", {}, "Drills"),
    table("Drills", ["Drill", "Zone", "Mode", "Probe", "State", "Starts", "Ends"], drills.map((d) => [
      link("#/drills/" + enc(d.name), d.name), d.spec.zone, d.spec.mode || "Drain", d.spec.probe || "-",
      el("span", { class: "drill-state" }, drillState(d)), d.spec.startsAt, new Date(drillEnd(d)).toISOString()]),
      "No drill yet."),
  ];
  if (me && me.role === "admin") {
    const zones = (await api("/zones?limit=1000")).items.map((z) => z.name);
    const errors = el("div", { id: "drill-errors", role: "alert" });
    const form = el("form", { id: "drill-form", "aria-labelledby": "drill-form-title" },
      el("label", { for: "drill-zone" }, "Zone to take down"),
      el("select", { id: "drill-zone", required: true }, zones.map((z) => el("option", { value: z }, z))),
      el("label", { for: "drill-mode" }, "Mode"),
      el("select", { id: "drill-mode" }, el("option", { value: "Drain" }, "Drain (orderly)"), el("option", { value: "Blackhole" }, "Blackhole (silent)")),
      el("label", { for: "drill-mesh" }, "Mesh"),
      el("input", { id: "drill-mesh", value: "default", required: true }),
      el("label", { for: "drill-probe" }, "Service to probe from the other zones (optional)"),
      el("input", { id: "drill-probe" }),
      el("label", { for: "drill-duration" }, "Duration"),
      el("input", { id: "drill-duration", value: "60s", required: true }),
      el("button", { type: "submit" }, "Start the drill"), errors);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      errors.replaceChildren();
      const v = (id) => document.getElementById(id).value.trim();
      const secs = parseDuration(v("drill-duration"));
      if (!secs) return errors.replaceChildren(el("p", { class: "error" }, "Duration: a number of seconds, minutes or hours, like 90s, 5m or 1h"));
      const zone = v("drill-zone");
      const probe = v("drill-probe");
      const now = Date.now();
      const starts = now + (probe ? 5000 : 0);
      // A PUT to an existing name would change that drill: a random tail keeps two
      // drills started in the same second apart.
      const tail = crypto.getRandomValues(new Uint16Array(1))[0].toString(16).padStart(4, "0");
      const name = zone + "-down-" + Math.floor(now / 1000) + "-" + tail;
      const body = { type: "Drill", name, spec: { type: "ZoneDown", zone, mode: v("drill-mode"), mesh: v("drill-mesh"),
        startsAt: new Date(starts).toISOString(), endsAt: new Date(starts + secs * 1000).toISOString() } };
      if (probe) body.spec.probe = probe;
      try {
        await api("/drills/" + enc(name), null, { method: "PUT", body: JSON.stringify(body) });
        location.hash = "#/drills/" + enc(name);
      } catch (e) {
        errors.replaceChildren(el("p", { class: "error" }, "Not started: " + e.message),
          el("ul", { class: "field-errors" }, e.errors.map((f) => el("li", {}, el("code", {}, f.field || "(drill)"), ": " + f.reason))));
      }
    });
    parts.push(el("h2", { id: "drill-form-title" }, "Start a drill"), form);
  }
  return [parts];
}

function parseDuration(text) {
  const m = /^(\d+)(s|m|h)$/.exec(text);
  return m ? Number(m[1]) * { s: 1, m: 60, h: 3600 }[m[2]] : null;
}

const COLOURS = [["#0969da", "blue"], ["#1a7f37", "green"], ["#9a6700", "yellow"], ["#cf222e", "red"], ["#8250df", "purple"], ["#57606a", "grey"]];

// A bar chart (SVG) of `series` ({label: {key: value}}), one stacked bar per label.
function bars(title, id, series, unit) {
  const labels = Object.keys(series);
  const keys = [...new Set(labels.flatMap((l) => Object.keys(series[l])))].sort();
  const sums = labels.map((l) => Object.values(series[l]).reduce((a, b) => a + b, 0));
  if (!sums.some((x) => x > 0)) return el("figure", { class: "chart", id }, el("p", { class: "empty" }, title + ": none."));
  const max = Math.max(1, ...sums);
  const w = 360, h = 160, bw = 60, gap = (w - labels.length * bw) / (labels.length + 1);
  const g = labels.map((l, i) => {
    let y = h - 20;
    const x = gap + i * (bw + gap);
    return [keys.map((k, ki) => {
      const v = series[l][k] || 0;
      const bh = ((h - 40) * v) / max;
      y -= bh;
      return v ? svg("rect", { x, y, width: bw, height: bh, fill: COLOURS[ki % COLOURS.length][0] },
        svg("title", {}, l + ", " + k + ": " + v + (unit || ""))) : null;
    }), svg("text", { x: x + bw / 2, y: h - 5, "text-anchor": "middle" }, l)];
  });
  return el("figure", { class: "chart", id },
    svg("svg", { viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": title }, g),
    el("figcaption", {}, title + (keys.length > 1 || keys[0] !== "" ? ": " + keys.map((k, i) => k + " (" + COLOURS[i % COLOURS.length][1] + ")").join(", ") : "")));
}

// A chart (SVG) of a probe's timeline over the drill: a stacked bar per step of
// `value(step)` ({key: number}), or with `line` a line through each step's one value;
// the drill's start and end are marked. Each bar or point has a title naming its
// phase, key, value and time, for screen readers and tests.
function timeChart(title, id, report, endMs, value, unit, line) {
  const steps = report.timeline, step = report.stepMs || 1000;
  const first = Math.min(0, ...steps.map((s) => s.atMs)), last = Math.max(endMs, ...steps.map((s) => s.atMs + step));
  const w = 360, h = 170, left = 50, right = 6, top = 10, bottom = 22;
  const x = (ms) => left + ((ms - first) * (w - left - right)) / (last - first);
  const keys = [...new Set(steps.flatMap((s) => Object.keys(value(s))))].sort();
  const totals = steps.map((s) => Object.values(value(s)).reduce((a, b) => a + (b || 0), 0));
  if (!totals.some((t) => t > 0)) return el("figure", { class: "chart", id }, el("p", { class: "empty" }, title + ": none."));
  const max = Math.max(...totals);
  const y = (v) => h - bottom - ((h - bottom - top) * v) / max;
  const phase = (ms) => (ms < 0 ? "before" : ms < endMs ? "during" : "after");
  const say = (s, k, v) => phase(s.atMs) + ", " + k + ": " + v + (unit || "") + " at " + (s.atMs / 1000) + " s";
  const marks = [[0, "start"], [endMs, "end"]].map(([ms, text]) => svg("g", { class: "mark" },
    svg("line", { x1: x(ms), x2: x(ms), y1: top, y2: h - bottom, "stroke-dasharray": "4 3", stroke: "#57606a" }),
    svg("text", { x: x(ms), y: h - 6, "text-anchor": "middle" }, text)));
  const axis = [svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, Math.round(max * 10) / 10 + (unit || "")),
    svg("text", { x: left - 4, y: h - bottom, "text-anchor": "end" }, "0"),
    svg("line", { x1: left, x2: w - right, y1: h - bottom, y2: h - bottom, stroke: "#d0d7de" })];
  let body;
  if (line) {
    const pts = steps.filter((s) => value(s)[keys[0]] !== undefined && value(s)[keys[0]] !== null)
      .map((s) => [x(s.atMs + step / 2), y(value(s)[keys[0]]), s]);
    body = [svg("polyline", { points: pts.map(([a, b]) => a + "," + b).join(" "), fill: "none", stroke: COLOURS[0][0], "stroke-width": 2 }),
      pts.map(([a, b, s]) => svg("circle", { cx: a, cy: b, r: 2.5, fill: COLOURS[0][0] }, svg("title", {}, say(s, keys[0], value(s)[keys[0]]))))];
  } else {
    const bw = Math.max(1, x(step) - x(0) - 1);
    body = steps.map((s) => {
      let top_ = h - bottom;
      return keys.map((k, ki) => {
        const v = value(s)[k] || 0;
        if (!v) return null;
        const bh = (h - bottom) - y(v);
        top_ -= bh;
        return svg("rect", { x: x(s.atMs), y: top_, width: bw, height: bh, fill: COLOURS[ki % COLOURS.length][0] }, svg("title", {}, say(s, k, v)));
      });
    });
  }
  return el("figure", { class: "chart", id },
    svg("svg", { viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": title }, axis, body, marks),
    el("figcaption", {}, title + (keys.length > 1 ? ": " + keys.map((k, i) => k + " (" + COLOURS[i % COLOURS.length][1] + ")").join(", ") : "")));
}

// A report's phases side by side, as a table: the numbers behind the charts.
function phaseTable(zone, s) {
  const row = (name, p) => [name, p.requests, p.failed, ms(p.p50Ms), ms(p.p99Ms),
    Object.entries(p.zones || {}).map(([z, n]) => z + ": " + n).join(", ") || "-"];
  return table("Phases of the report from " + zone, ["Phase", "Requests", "Failed", "p50", "p99", "Answered by"],
    [row("before", s.before), row("during", s.during), row("after", s.after)], "");
}

async function drillPage(name) {
  const d = await api("/drills/" + enc(name));
  const state = drillState(d);
  const reports = (await listAll("/meshes/" + enc(d.spec.mesh) + "/drillreports")).filter((r) => r.spec.drill === name);
  const parts = [
    el("h1", {}, "Drill " + name),
    dl([["State", el("span", { id: "drill-state" }, state)], ["Zone down", d.spec.zone], ["Mode", d.spec.mode || "Drain"],
      ["Mesh", d.spec.mesh], ["Probe", d.spec.probe], ["Starts", d.spec.startsAt], ["Ends", new Date(drillEnd(d)).toISOString()]]),
  ];
  if (me && me.role === "admin" && (state === "running" || state === "starting")) {
    const stop = el("button", { type: "button", id: "drill-stop" }, "Stop the drill now");
    stop.addEventListener("click", async () => {
      d.spec.stoppedAt = new Date().toISOString();
      try {
        await api("/drills/" + enc(name), null, { method: "PUT", body: JSON.stringify({ type: "Drill", name, spec: d.spec }) });
      } catch (e) {
        setStatus("Not stopped: " + e.message);
      }
      route();
    });
    parts.push(stop);
  }
  parts.push(el("h2", {}, "Reports from the probing zones"));
  const endMs = drillEnd(d) - Date.parse(d.spec.startsAt);
  if (!reports.length) parts.push(el("p", { class: "empty" }, d.spec.probe ? "No zone has reported yet." : "No probe: this drill has no reports."));
  for (const r of reports) {
    const s = r.spec;
    const phases = { before: s.before, during: s.during, after: s.after };
    const map = (f) => Object.fromEntries(Object.entries(phases).map(([k, p]) => [k, f(p)]));
    parts.push(el("section", { class: "report", "aria-label": "Report from " + s.zone },
      el("h3", {}, "From " + s.zone + " probing " + s.service + " (" + s.state + ")"),
      dl([["Traffic moved after", s.movedAfterMs === null || s.movedAfterMs === undefined ? "not yet" : s.movedAfterMs + " ms"],
        ["Failed while moving", s.failedDuringMove], ["Recovered after", s.recoveredAfterMs === undefined ? "-" : s.recoveredAfterMs + " ms"],
        ["Error", s.error]]),
      (s.timeline || []).length
        ? el("div", { class: "charts" },
          timeChart("Answered by zone over time", "chart-zones-" + s.zone, s, endMs, (t) => t.zones || {}),
          timeChart("Failed requests over time", "chart-failed-" + s.zone, s, endMs, (t) => ({ failed: t.failed })),
          timeChart("Latency p99 over time", "chart-p99-" + s.zone, s, endMs, (t) => ({ p99: t.p99Ms }), " ms", true))
        // A report from a zone older than timelines: per phase.
        : el("div", { class: "charts" },
          bars("Answered by zone", "chart-zones-" + s.zone, map((p) => p.zones || {})),
          bars("Failed requests", "chart-failed-" + s.zone, map((p) => ({ failed: p.failed || 0 }))),
          bars("Latency p99", "chart-p99-" + s.zone, map((p) => ({ p99: p.p99Ms || 0 })), " ms")),
      phaseTable(s.zone, s)));
  }
  return [parts];
}

// Every policy of `mesh`, by kind: one list per kind, all at once.
async function meshPolicies(mesh) {
  const types = await policyTypes();
  const lists = await Promise.all(types.map((t) => listAll("/meshes/" + enc(mesh) + "/" + t.plural)));
  return types.flatMap((t, i) => lists[i].map((p) => ({ type: t, policy: p })));
}

async function policiesPage() {
  const meshes = (await api("/meshes?limit=1000")).items.map((m) => m.name);
  const rows = [];
  for (const m of meshes) {
    for (const { type, policy } of await meshPolicies(m)) {
      rows.push([type.kind, m, link("#/policies/" + enc(m) + "/" + type.plural + "/" + enc(policy.name), policy.name),
        policy.origin || "global", policy.modificationTime || "-"]);
    }
  }
  return [
    el("h1", {}, "Policies"),
    table("Policies", ["Kind", "Mesh", "Name", "Origin", "Changed"], rows, "No policies yet.")];
}

// The line (0-based) of `field`, a path like `spec.to[0].default.connectTimeout`, in
// `text`: YAML as the API writes it (block style, a sequence's dashes at its key's
// indent or deeper). A field that is not there (a missing one) points at its nearest
// ancestor that is; `null` when not even the first key is.
function yamlLine(text, field) {
  const lines = text.split("\n").map((l) => {
    const lead = /^ */.exec(l)[0].length;
    let rest = l.slice(lead), dash = null, at = lead;
    if (/^-( |$)/.test(rest)) {
      dash = lead;
      const m = /^(- +)+/.exec(rest);
      at += m[0].length;
      rest = rest.slice(m[0].length);
    }
    const k = /^("[^"]*"|'[^']*'|[^\s:#'"][^:#]*?):( |$)/.exec(rest);
    return { dash, key: k ? k[1].replace(/^["']|["']$/g, "") : null, at };
  });
  const segs = [];
  for (const part of field.split(".")) {
    const m = /^([^[]*)((?:\[\d+\])*)$/.exec(part);
    if (!m) break;
    if (m[1]) segs.push(m[1]);
    for (const i of m[2].matchAll(/\[(\d+)\]/g)) segs.push(Number(i[1]));
  }
  let lo = 0, hi = lines.length, indent = -1, found = null;
  for (const seg of segs) {
    if (typeof seg === "string") {
      const keys = [];
      for (let i = lo; i < hi; i++) if (lines[i].key !== null && lines[i].at > indent) keys.push(i);
      const shallowest = Math.min(...keys.map((i) => lines[i].at));
      const i = keys.find((i) => lines[i].at === shallowest && lines[i].key === seg);
      if (i === undefined) break;
      found = i;
      indent = lines[i].at;
      let end = i + 1;
      while (end < hi && !((lines[end].key !== null && lines[end].at <= indent && lines[end].dash === null) ||
        (lines[end].dash !== null && lines[end].dash < indent))) end++;
      [lo, hi] = [i + 1, end];
    } else {
      const dashes = [];
      for (let i = lo; i < hi; i++) if (lines[i].dash !== null && lines[i].dash >= indent) dashes.push(i);
      const outer = Math.min(...dashes.map((i) => lines[i].dash));
      const items = dashes.filter((i) => lines[i].dash === outer);
      if (seg >= items.length) break;
      found = items[seg];
      indent = outer + 1;
      [lo, hi] = [items[seg], seg + 1 < items.length ? items[seg + 1] : hi];
    }
  }
  return found;
}

// The YAML with each refused field's message under its line, as a compiler shows them.
function annotated(text, errors) {
  const at = new Map();
  for (const f of errors) {
    const line = f.field ? yamlLine(text, f.field) : null;
    const key = line === null ? 0 : line;
    at.set(key, [...(at.get(key) || []), f]);
  }
  return el("ol", { class: "yaml-annotated", id: "policy-annotated", "aria-label": "The policy with its errors on their fields" },
    text.replace(/\n$/, "").split("\n").map((line, i) => el("li", { class: at.has(i) ? "error-line" : null },
      el("code", {}, line || " "),
      (at.get(i) || []).map((f) => el("div", { class: "field-error", role: "note" },
        el("code", {}, f.field || "(resource)"), ": " + f.reason)))));
}

async function policyPage(mesh, plural, name) {
  const path = "/meshes/" + enc(mesh) + "/" + plural + "/" + enc(name);
  const yaml = await api(path, null, { accept: "yaml" });
  const kind = ((await policyTypes()).find((t) => t.plural === plural) || {}).kind || plural;
  const affected = await api(path + "/affected");
  const parts = [
    el("h1", {}, kind + " " + name),
    dl([["Mesh", mesh], ["Kind", kind],
      ["Affects", el("span", { id: "policy-affects" }, affected.count + (affected.count === 1 ? " proxy" : " proxies"))]]),
    affected.items.length ? el("p", { id: "policy-affected" }, affected.items.slice(0, 50).map((i, n) => [n ? ", " : "", dpLink(mesh, i.dataplane), " (" + i.zone + ")"]),
      affected.count > 50 ? " and " + (affected.count - 50) + " more" : "") : null,
    el("h2", {}, "Enforcement"),
    (affected.warnings || []).length
      ? el("ul", { class: "warnings", id: "policy-warnings" }, affected.warnings.map((w) => el("li", {}, el("code", {}, w.field), ": " + w.reason)))
      : el("p", { class: "ok", id: "policy-warnings" }, "Every field is enforced by the proxies it affects."),
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
      area.removeAttribute("aria-invalid");
      const text = area.value;
      try {
        await api(path, null, { method: "PUT", body: text });
        errors.replaceChildren(el("p", { class: "ok", id: "policy-applied" }, "Applied."));
        area.value = await api(path, null, { accept: "yaml" });
      } catch (e) {
        const lineOf = (f) => (f.field ? yamlLine(text, f.field) : null);
        errors.replaceChildren(
          el("p", { class: "error" }, "Not applied: " + e.message),
          ...(e.errors.length ? [el("ul", { class: "field-errors" },
            e.errors.map((f) => el("li", {}, lineOf(f) === null ? null : "line " + (lineOf(f) + 1) + ": ",
              el("code", {}, f.field || "(resource)"), ": " + f.reason))),
          annotated(text, e.errors)] : []));
        // The caret goes to the first refused field's line, ready to fix.
        const first = e.errors.map(lineOf).find((l) => l !== null);
        if (first !== undefined) {
          area.setAttribute("aria-invalid", "true");
          const lines = text.split("\n");
          const start = lines.slice(0, first).reduce((n, l) => n + l.length + 1, 0);
          area.focus();
          area.setSelectionRange(start, start + lines[first].length);
        }
      }
    });
    parts.push(form);
  } else {
    parts.push(el("pre", { id: "policy-yaml", tabindex: 0 }, yaml));
  }
  return [...parts];
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
  // The skip link moves focus to the content without touching the page's address (the
  // hash is the router's).
  document.querySelector(".skip").addEventListener("click", (ev) => {
    ev.preventDefault();
    document.getElementById("main").focus();
  });
  window.addEventListener("hashchange", route);
  route();
});
