// The dit4c portal: a small single-page UI over the JSON API (/api/...). No framework and no
// build step, so the Lambda package stays small and the page works from the local stack as is.
"use strict";

const CSRF_HEADER = "X-CSRF-Token";
const POLL_MS = 2000;
let me = null;
let pollTimer = null;

function $(id) { return document.getElementById(id); }

function csrfToken() {
  // The session's token as the server gave it (login, /api/me), never a cookie: a sibling
  // host can plant cookies, it cannot read this answer.
  return me && me.csrf_token ? me.csrf_token : "";
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers[CSRF_HEADER] = csrfToken();
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

function flash(message, kind) {
  const el = $("flash");
  el.textContent = message;
  el.className = kind || "error";
  el.hidden = !message;
}

function listOf(data, key) {
  if (Array.isArray(data)) return data;
  return (data && data[key]) || [];
}

// Only a same-origin path may follow a login: anything else would be an open redirect. The
// browser's own URL parser decides (it drops tabs and newlines and reads "\\" as "/", so
// "/\t/evil.example" is "//evil.example"), exactly as location.assign() would read it.
function safeNext() {
  const next = new URLSearchParams(location.search).get("next");
  if (!next) return null;
  let url;
  try { url = new URL(next, location.origin); } catch (e) { return null; }
  if (url.origin !== location.origin) return null;
  return url.pathname + url.search + url.hash;
}

function show(view) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `view-${view}`;
  }
  $("nav").hidden = view === "login";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// --- views ----------------------------------------------------------------------------------

let shownInstances = "";

async function renderInstances(force) {
  const data = await api("GET", "/api/instances");
  const rows = listOf(data, "instances");
  // Redraw only when something changed: a table rebuilt under the pointer loses clicks.
  const fingerprint = JSON.stringify(rows);
  if (!force && fingerprint === shownInstances) return;
  shownInstances = fingerprint;
  const body = $("instances");
  body.replaceChildren();
  $("no-instances").hidden = rows.length > 0;
  for (const inst of rows) {
    const id = inst.instance_id || inst.id;
    const progress = inst.progress && Object.keys(inst.progress).length
      ? " " + Object.entries(inst.progress).map(([k, v]) => `${k} ${v}%`).join(", ") : "";
    const storage = inst.storage && !inst.storage.ok
      ? el("div", { "class": "reason", "data-testid": "storage" },
        `storage: ${inst.storage.message || "failing"}`) : null;
    const state = el("td", { "class": `state state-${inst.state}`, "data-testid": "state" },
      inst.state + progress, inst.reason ? el("div", { "class": "reason" }, inst.reason) : null,
      storage);
    const open = inst.url && inst.state === "running"
      ? el("a", { href: inst.url, target: "_blank", rel: "noopener" }, "open") : "";
    const actions = el("td", { "class": "actions" });
    const act = (label, method, suffix) => actions.append(el("button", {
      type: "button", "data-action": label,
      onclick: async () => {
        try { await api(method, `/api/instances/${id}${suffix}`); await renderInstances(true); }
        catch (e) { flash(e.message); }
      },
    }, label));
    if (["running", "starting", "scheduled", "pending"].includes(inst.state)) act("stop", "POST", "/stop");
    if (inst.state === "stopped") { act("save", "POST", "/save"); act("discard", "POST", "/discard"); }
    if (["saved", "discarded", "failed", "stopped"].includes(inst.state)) act("delete", "DELETE", "");
    const mine = me && inst.owner === (me.user || me).username;
    if (mine && !["saved", "discarded"].includes(inst.state)) {
      actions.append(el("button", {
        type: "button", "data-action": "share",
        onclick: () => toggleSharePanel(actions, `/api/instances/${id}/share`, false),
      }, "share…"));
    }
    body.append(el("tr", { "data-instance": id },
      el("td", {}, inst.name || id), el("td", {}, inst.image_name || inst.image || inst.image_id || ""),
      state, el("td", {}, open), actions));
  }
}

// A small form under an instance's or image's actions: share with a user, revoke, and for
// images an expiring link. Shows who has access after every change.
function toggleSharePanel(holder, path, links) {
  const open = holder.querySelector(".share-panel");
  if (open) { open.remove(); return; }
  const who = el("input", { name: "username", placeholder: "username", "aria-label": "username" });
  const status = el("div", { "class": "shared", "data-testid": "shared" });
  const showAccess = (data) => {
    const users = (data && data.shared_with) || [];
    status.replaceChildren(users.length ? `Shared with ${users.join(", ")}` : "Not shared with anyone");
    for (const link of (data && data.links) || []) {
      status.append(el("div", { "class": "link" }, "Link until ", formatDate(link.expires_at), ": ",
        el("input", { readonly: "readonly", value: link.url, "data-testid": "share-link", size: 40 }),
        el("button", {
          type: "button", "data-action": "revoke-link",
          onclick: () => change({ link_id: link.id, revoke: true }),
        }, "revoke link")));
    }
  };
  const change = async (body) => {
    try { showAccess(await api("POST", path, body)); shownInstances = ""; }
    catch (e) { flash(e.message); }
  };
  const panel = el("div", { "class": "share-panel" }, who,
    el("button", { type: "button", "data-action": "share-user",
                   onclick: () => change({ username: who.value }) }, "Share"),
    el("button", { type: "button", "data-action": "revoke-user",
                   onclick: () => change({ username: who.value, revoke: true }) }, "Revoke"),
    links ? el("button", { type: "button", "data-action": "make-link",
                           onclick: () => change({ link: true }) }, "Make a link (6 h)") : null,
    status);
  holder.append(panel);
  api("GET", path).then(showAccess).catch(() => {});
}

function formatSize(bytes) {
  if (bytes == null) return "";
  return bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(1)} GB` : `${(bytes / (1 << 20)).toFixed(1)} MB`;
}

function formatDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function storageText(use) {
  const share = use.quota_bytes ? ` (${Math.round(100 * use.used_bytes / use.quota_bytes)}%)` : "";
  return `${use.username}: ${bytes(use.used_bytes)} of ${bytes(use.quota_bytes)} used${share}, ` +
    `at ${use.mount} in every instance (counted ${use.counted_at})`;
}

async function renderStorage() {
  const holder = $("storage");
  try {
    const use = await api("GET", "/api/storage");
    holder.textContent = "Storage " + storageText(use);
    holder.hidden = false;
  } catch (e) { holder.hidden = true; }  // no storage in this deployment
}

async function renderImages() {
  const data = await api("GET", "/api/images");
  const user = (me && (me.user || me).username) || "";
  const groups = { catalog: $("images"), mine: $("saved-images"), shared: $("shared-images") };
  for (const list of Object.values(groups)) list.replaceChildren();
  for (const image of listOf(data, "images")) {
    const id = image.image_id || image.id;
    const saved = image.kind === "saved";
    const mine = saved && image.owner === user;
    const card = el("li", { "data-image": id },
      el("h3", {}, image.name || image.display_name || image.image),
      saved ? el("p", { "class": "meta" },
        formatSize(image.size), image.source_instance ? ` · from instance ${image.source_instance}` : "",
        image.created_at ? ` · ${formatDate(image.created_at)}` : "",
        mine ? "" : ` · shared by ${image.owner}`) : el("code", {}, image.image || image.ref || ""));
    const actions = el("div", { "class": "actions" });
    actions.append(el("button", {
      type: "button", "data-action": "launch",
      onclick: async () => {
        try {
          await api("POST", "/api/instances", { image_id: id });
          flash("Launching…", "info");
          location.hash = "#/";
        } catch (e) { flash(e.message); }
      },
    }, "Launch"));
    if (saved) {
      actions.append(el("button", {
        type: "button", "data-action": "export",
        onclick: async () => {
          try {
            const link = await api("POST", `/api/images/${id}/export`);
            actions.querySelector(".export")?.remove();
            actions.append(el("a", { "class": "export", href: link.url, download: "",
                                     "data-testid": "export-link" },
              `Download (link valid until ${formatDate(link.expires_at)})`));
          } catch (e) { flash(e.message); }
        },
      }, "Export"));
    }
    if (mine) {
      actions.append(el("button", {
        type: "button", "data-action": "share",
        onclick: () => toggleSharePanel(actions, `/api/images/${id}/share`, true),
      }, "Share…"));
      actions.append(el("button", {
        type: "button", "data-action": "delete",
        onclick: async () => {
          if (!confirm(`Delete the saved image ${image.name}? Its storage is freed.`)) return;
          try { await api("DELETE", `/api/images/${id}`); await renderImages(); }
          catch (e) { flash(e.message); }
        },
      }, "Delete"));
    }
    card.append(actions);
    (mine ? groups.mine : saved ? groups.shared : groups.catalog).append(card);
  }
  $("no-saved-images").hidden = groups.mine.children.length > 0;
  $("shared-heading").hidden = groups.shared.children.length === 0;
}

// A link someone shared: /#/images/accept/<token> adds the image to this user's images.
async function acceptImageLink(token) {
  const image = await api("POST", "/api/images/links", { token });
  // Not through location.hash: that would route again, and routing clears the message.
  history.replaceState(null, "", "#/images");
  show("images");
  await renderImages();
  flash(`${image.name} was shared with you: it is in your images now.`, "info");
}

// Admins' nodes page: per cluster, its join tokens (make one, copy its command, revoke) and
// its nodes (capacity, use, heartbeat, version, helpers, drain and decommission).
const NODE_ONLINE_SECONDS = 600;
let shownNodes = "";

async function renderNodes(force) {
  const clusters = listOf(await api("GET", "/api/clusters"), "clusters");
  const pages = [];
  for (const cluster of clusters) {
    const id = cluster.cluster_id || cluster.id;
    const [nodes, tokens] = await Promise.all([
      api("GET", `/api/clusters/${id}/nodes`), api("GET", `/api/clusters/${id}/join-tokens`)]);
    pages.push({ cluster, id, nodes: listOf(nodes, "nodes"), tokens: listOf(tokens, "join_tokens") });
  }
  // Redraw only when something changed: a table rebuilt under the pointer loses clicks, and
  // a command just made must stay on screen to be copied.
  const fingerprint = JSON.stringify(pages.map((p) => [p.id, p.tokens,
    p.nodes.map((n) => ({ ...n, heartbeat_age_seconds: Math.round((n.heartbeat_age_seconds || 0) / 10) }))]));
  if (!force && fingerprint === shownNodes) return;
  shownNodes = fingerprint;
  const holder = $("clusters");
  const made = new Map([...holder.querySelectorAll("[data-testid=join-command]")]
    .map((box) => [box.closest("[data-cluster]").dataset.cluster, box.closest(".join-made")]));
  holder.replaceChildren();
  for (const { cluster, id, nodes, tokens } of pages) {
    const who = cluster.public ? "everyone may launch here"
      : `only admins${(cluster.users || []).length ? " and " + cluster.users.join(", ") : ""} may launch here`;
    const section = el("div", { "class": "cluster", "data-cluster": id },
      el("h2", {}, cluster.name || id), el("p", { "class": "access" }, who),
      joinTokenPanel(id, tokens, made.get(id)), nodeTable(nodes));
    holder.append(section);
  }
}

function joinTokenPanel(clusterId, tokens, made) {
  const hours = el("select", { name: "hours", "aria-label": "valid for" },
    el("option", { value: "1" }, "1 hour"), el("option", { value: "24", selected: "selected" }, "1 day"),
    el("option", { value: "168" }, "7 days"));
  const panel = el("div", { "class": "join-tokens" }, el("h3", {}, "Join tokens"));
  const form = el("form", { "class": "join-form" }, el("label", {}, "Valid for", hours),
    el("button", { type: "submit", "data-action": "new-join-token" }, "New join token"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const token = await api("POST", `/api/clusters/${clusterId}/join-tokens`, { hours: Number(hours.value) });
      panel.querySelector(".join-made")?.remove();
      form.after(joinCommand(token));
      shownNodes = "";
      await renderNodes();
    } catch (e) { flash(e.message); }
  });
  panel.append(form);
  if (made) panel.append(made);
  if (!tokens.length) {
    panel.append(el("p", { "class": "meta", "data-testid": "no-join-tokens" }, "No unused join tokens."));
    return panel;
  }
  const rows = el("tbody");
  for (const token of tokens) {
    rows.append(el("tr", { "data-join-token": token.id },
      el("td", {}, el("code", {}, token.id.slice(0, 12))), el("td", {}, formatDate(token.expires_at)),
      el("td", {}, token.created_by || ""), el("td", { "class": "actions" }, el("button", {
        type: "button", "data-action": "revoke-join-token",
        onclick: async () => {
          try {
            await api("DELETE", `/api/clusters/${clusterId}/join-tokens/${token.id}`);
            const shown = panel.querySelector(".join-made");
            if (shown && shown.dataset.token === token.id) shown.remove();
            flash("Join token revoked: no node can join with it.", "info");
            shownNodes = "";
            await renderNodes();
          } catch (e) { flash(e.message); }
        },
      }, "revoke"))));
  }
  panel.append(el("table", { "class": "join-token-list" }, el("thead", {}, el("tr", {},
    el("th", {}, "Token"), el("th", {}, "Valid until"), el("th", {}, "Made by"), el("th", {}, ""))), rows));
  return panel;
}

// The command is shown once (the portal keeps only the token's hash): copy it now.
function joinCommand(token) {
  const box = el("textarea", { readonly: "readonly", rows: 3, "data-testid": "join-command" });
  box.value = token.command;
  const copy = el("button", {
    type: "button", "data-action": "copy-join-command",
    onclick: async () => {
      try { await navigator.clipboard.writeText(box.value); }
      catch (e) { box.select(); document.execCommand("copy"); }
      flash("Join command copied: run it on the node's machine.", "info");
    },
  }, "Copy");
  return el("div", { "class": "join-made", "data-token": token.id },
    el("p", {}, `Run this on the new node's machine before ${formatDate(token.expires_at)}; `
      + "it works once and is not shown again."), box, copy);
}

function nodeTable(nodes) {
  if (!nodes.length) return el("p", { "class": "meta", "data-testid": "no-nodes" }, "No nodes yet.");
  const tbody = el("tbody");
  for (const node of nodes) {
    const age = node.heartbeat_age_seconds;
    const online = node.state !== "decommissioned" && age != null && age < NODE_ONLINE_SECONDS;
    const actions = el("td", { "class": "actions" });
    const act = (label, suffix, question) => actions.append(el("button", {
      type: "button", "data-action": label,
      onclick: async () => {
        if (question && !confirm(question)) return;
        try { await api("POST", `/api/nodes/${node.id}/${suffix}`); shownNodes = ""; await renderNodes(); }
        catch (e) { flash(e.message); }
      },
    }, label));
    if (node.state === "active") act("drain", "drain");
    if (node.state === "draining") act("activate", "activate");
    if (node.state !== "decommissioned") {
      act("decommission", "decommission", `Decommission ${node.name}? It can never come back `
        + "(its instances fail); to bring the machine back, join it again.");
    }
    const helpers = node.helpers == null ? "" : node.helpers;
    tbody.append(el("tr", { "data-node": node.id },
      el("td", {}, node.name || node.id),
      el("td", { "data-testid": "node-state", "class": `state-${online ? "online" : "offline"}` },
        `${node.state}, ${online ? "online" : "offline"}`),
      el("td", {}, `${node.cpu_total} CPU, ${node.memory_mb_total} MB`),
      el("td", {}, `${node.cpu_reserved} CPU, ${node.memory_mb_reserved} MB reserved; `
        + `${(node.running || []).length} running, load ${Number(node.load || 0).toFixed(2)}`),
      el("td", { "data-testid": "node-heartbeat" }, age != null ? `${Math.round(age)} s ago` : "never"),
      el("td", {}, node.version || ""),
      el("td", { "data-testid": "node-helpers", "class": helpers && helpers !== "ok" ? "problem" : "" }, helpers),
      actions));
  }
  return el("table", { "class": "nodes" }, el("thead", {}, el("tr", {},
    el("th", {}, "Node"), el("th", {}, "State"), el("th", {}, "Capacity"), el("th", {}, "Use"),
    el("th", {}, "Heartbeat"), el("th", {}, "Version"), el("th", {}, "Helpers"), el("th", {}, ""))), tbody);
}

async function route() {
  clearInterval(pollTimer);
  flash("");
  try {
    me = await api("GET", "/api/me");
  } catch (e) {
    if (e.status === 401 || e.status === 403) { me = null; show("login"); await renderProviders(); return; }
    flash(e.message); return;
  }
  const user = me.user || me;
  $("whoami").textContent = user.username || "";
  $("nav-admin").hidden = !user.admin;
  $("nav-nodes").hidden = !user.admin;
  const path = (location.hash.replace(/^#\//, "") || "instances").split("/");
  const view = path[0];
  try {
    if (view === "images" && path[1] === "accept" && path[2]) { await acceptImageLink(path[2]); return; }
    if (view === "images") { show("images"); await renderImages(); }
    else if (view === "admin" && user.admin) { show("admin"); }
    else if (view === "nodes" && user.admin) {
      show("nodes");
      await renderNodes(true);
      pollTimer = setInterval(() => renderNodes().catch((e) => flash(e.message)), POLL_MS);
    }
    else {
      show("instances");
      await renderInstances(true);
      await renderStorage();
      pollTimer = setInterval(() => renderInstances().catch((e) => flash(e.message)), POLL_MS);
    }
  } catch (e) { flash(e.message); }
}

async function renderProviders() {
  const holder = $("providers");
  holder.replaceChildren();
  let providers = [];
  try { providers = listOf(await api("GET", "/api/login/providers"), "providers"); } catch (e) { return; }
  for (const p of providers) {
    const next = safeNext();
    const href = p.login_url + (next ? (p.login_url.includes("?") ? "&" : "?") + "next=" + encodeURIComponent(next) : "");
    holder.append(el("a", { "class": "provider", href }, `Log in with ${p.display_name || p.name}`));
  }
}

// --- forms ----------------------------------------------------------------------------------

function formJson(form) {
  const out = {};
  for (const input of form.querySelectorAll("input")) {
    if (input.type === "checkbox") out[input.name] = input.checked;
    else if (input.type === "number") out[input.name] = Number(input.value);
    else out[input.name] = input.value;
  }
  return out;
}

function onSubmit(id, handler) {
  $(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    try { await handler(formJson(event.target)); event.target.reset(); }
    catch (e) { flash(e.message); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  onSubmit("login-form", async (body) => {
    await api("POST", "/api/login", body);
    const next = safeNext();
    if (next) { location.assign(next); return; }
    await route();
  });
  onSubmit("user-form", async (body) => {
    await api("POST", "/api/users", body);
    flash(`User ${body.username} created.`, "info");
  });
  $("storage-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const name = encodeURIComponent(form.elements.username.value);
    const quota = form.elements.quota_mb.value;
    try {
      const use = event.submitter && event.submitter.name === "set"
        ? await api("PUT", `/api/users/${name}/storage`, { quota_mb: quota === "" ? null : Number(quota) })
        : await api("GET", `/api/users/${name}/storage`);
      $("user-storage").textContent = storageText(use);
      $("user-storage").hidden = false;
    } catch (e) { flash(e.message); }
  });
  onSubmit("image-form", async (body) => {
    await api("POST", "/api/images", body);
    flash(`Image ${body.name} added.`, "info");
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (e) { /* already logged out */ }
    me = null;
    location.hash = "#/";
    await route();
  });
  window.addEventListener("hashchange", route);
  route();
});
