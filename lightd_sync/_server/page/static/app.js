// The lightd-sync receiver's status page. Standard DOM only, no framework.
// Every value that came from a node is put on the page with textContent, never
// as HTML. The page reads the receiver's operator routes with the session
// cookie, and polls them every 2 s while the tab is visible. Every URL is
// relative, so that the page also works under a path prefix a proxy strips.
"use strict";

(function () {
  const POLL_MS = 2000;
  const PAGE_SIZE = 50;
  const HISTORY = 50;

  const view = {
    server: null, // the id shown in the detail view, or null for the list
    status: "",
    node: "",
    prefix: "",
    after: null, // the cursor of the page shown (null: the first)
    cursors: [], // the cursors of the pages before it, for "Previous"
  };
  let timer = null;
  let busy = false;
  let again = false;
  let knownNodes = "";

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // -- time ---------------------------------------------------------------

  // ISO 8601 as the receiver writes it; a number is seconds since the epoch.
  function isoOf(value) {
    if (typeof value === "number" && Number.isFinite(value)) {
      return new Date(value * 1000).toISOString();
    }
    return value || null;
  }

  function ago(value) {
    const iso = isoOf(value);
    if (!iso) return "never";
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return String(iso);
    const s = Math.max(0, Math.round((Date.now() - then) / 1000));
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min ago";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h ago";
    return Math.floor(h / 24) + " days ago";
  }

  function timeCell(value) {
    const iso = isoOf(value);
    const td = el("td", "time", ago(iso));
    if (iso) {
      td.title = iso;
      td.dataset.iso = iso;
    }
    return td;
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "";
    if (seconds % 3600 === 0) return seconds / 3600 + " h";
    if (seconds % 60 === 0) return seconds / 60 + " min";
    return seconds + " s";
  }

  // -- numbers ------------------------------------------------------------

  function num(value, digits) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "–";
    return value.toLocaleString(undefined, { maximumFractionDigits: digits });
  }

  function cost(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "–";
    return value.toLocaleString(undefined, {
      minimumFractionDigits: 2,
      maximumFractionDigits: value < 1 ? 4 : 2,
    });
  }

  function resources(usage) {
    if (!usage) return "–";
    return [
      num(usage.cpu_vcpus, 2) + " vCPU",
      num(usage.memory_gb, 2) + " GB RAM",
      num(usage.storage_gb, 1) + " GB disk",
      num(usage.egress_gb, 2) + " GB out",
    ].join(" · ");
  }

  // -- pieces -------------------------------------------------------------

  function pill(status) {
    const known = ["installing", "ready", "failed"].includes(status);
    return el("span", "pill " + (known ? status : "other"), status || "?");
  }

  function stuckBadge() {
    const badge = el("span", "pill stuck", "stuck");
    badge.title = "Installing for longer than the receiver's --stuck-after";
    return badge;
  }

  function errorCell(item) {
    const td = el("td", "error-cell");
    if (item.error) {
      td.appendChild(el("span", "error-value", item.error));
      if (item.data !== undefined && item.data !== null && item.data !== "") {
        td.appendChild(el("span", "error-data", item.data));
        td.title = item.data;
      }
    } else {
      td.appendChild(el("span", "muted", "—"));
    }
    return td;
  }

  function serverLink(id) {
    const a = el("a", "server-id", id);
    a.href = "#/server/" + encodeURIComponent(id);
    return a;
  }

  // -- fetching -----------------------------------------------------------

  async function getJSON(url) {
    const answer = await fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (answer.status === 401) {
      // The session ended (logged out elsewhere, expired, token changed).
      window.location.assign("./");
      throw new Error("logged out");
    }
    if (answer.status === 404 && url.startsWith("servers/")) return null;
    if (!answer.ok) {
      let why = answer.status + " " + answer.statusText;
      try {
        const doc = await answer.json();
        if (doc && typeof doc.error === "string") why = doc.error;
      } catch (e) {
        // not JSON: keep the status line
      }
      throw new Error("/" + url.split("?")[0] + ": " + why);
    }
    return answer.json();
  }

  function filterQuery() {
    const q = new URLSearchParams();
    if (view.status) q.set("status", view.status);
    if (view.node) q.set("node", view.node);
    if (view.prefix) q.set("prefix", view.prefix);
    return q;
  }

  function serversURL() {
    const q = filterQuery();
    if (view.after) q.set("after", view.after);
    q.set("limit", String(PAGE_SIZE));
    return "servers?" + q.toString();
  }

  // -- rendering ----------------------------------------------------------

  function renderSummary(summary) {
    const counts = summary.counts || {};
    let all = 0;
    for (const status of ["installing", "ready", "failed"]) {
      const n = counts[status] || 0;
      all += n;
      $("n-" + status).textContent = n.toLocaleString();
    }
    $("n-all").textContent = all.toLocaleString();
    $("n-stuck").textContent = (summary.stuck || 0).toLocaleString();
    $("count-stuck").classList.toggle("alert", (summary.stuck || 0) > 0);
    $("stuck-hint").textContent =
      typeof summary.stuck_after === "number" ? "over " + duration(summary.stuck_after) : "";
    const nodes = summary.nodes || {};
    $("nodes-summary").textContent =
      (nodes.online || 0) + " online · " + (nodes.stale || 0) + " stale · " +
      (nodes.never_seen || 0) + " never seen";
  }

  function renderNodes(doc) {
    const list = $("nodes");
    const nodes = (doc && doc.nodes) || [];
    list.replaceChildren();
    for (const node of nodes) {
      const li = el("li", "node " + (node.state || "unknown"));
      li.appendChild(el("span", "dot"));
      const main = el("div", "node-main");
      main.appendChild(el("span", "node-name", node.name));
      const state = (node.state || "").replace("_", " ");
      const seen = node.last_seen ? " · seen " + ago(node.last_seen) : "";
      const line = el("span", "node-line muted", state + seen);
      if (node.last_seen) line.title = node.last_seen;
      main.appendChild(line);
      li.appendChild(main);
      const side = el("div", "node-side");
      const servers = num(node.servers, 0) + (node.servers === 1 ? " server" : " servers");
      side.appendChild(el("span", "node-servers", servers));
      side.appendChild(el("span", "node-cost muted", cost(node.cost_24h) + " / 24 h"));
      li.appendChild(side);
      li.title = "Show this node's servers";
      li.addEventListener("click", () => {
        setFilter({ node: view.node === node.name ? "" : node.name });
      });
      li.classList.toggle("selected", view.node === node.name);
      list.appendChild(li);
    }
    if (!nodes.length) list.appendChild(el("li", "empty", "No node has been configured."));
    // The node filter's options follow the nodes the receiver knows.
    const names = nodes.map((n) => n.name);
    const key = names.join("\n");
    if (key !== knownNodes) {
      knownNodes = key;
      const select = $("node-filter");
      select.replaceChildren(el("option", null, "All nodes"));
      select.firstChild.value = "";
      for (const name of names) {
        const option = el("option", null, name);
        option.value = name;
        select.appendChild(option);
      }
    }
    $("node-filter").value = view.node;
  }

  function renderServers(doc) {
    const body = $("servers");
    const servers = (doc && doc.servers) || {};
    const ids = Object.keys(servers);
    body.replaceChildren();
    for (const id of ids) {
      const item = servers[id];
      const tr = el("tr", "status-" + item.status + (item.stuck ? " stuck" : ""));
      tr.dataset.server = id;
      const idCell = el("td", "id-cell");
      idCell.appendChild(serverLink(id));
      tr.appendChild(idCell);
      const status = el("td");
      status.appendChild(pill(item.status));
      if (item.stuck) status.appendChild(stuckBadge());
      tr.appendChild(status);
      tr.appendChild(el("td", "node-cell", item.node || "—"));
      tr.appendChild(timeCell(item.updated));
      tr.appendChild(errorCell(item));
      tr.appendChild(el("td", "num", item.usage ? cost(item.usage.estimated_cost) : "–"));
      const res = el("td", "resources muted", resources(item.usage));
      if (item.usage && item.usage.at) res.title = "measured " + item.usage.at;
      tr.appendChild(res);
      tr.addEventListener("click", (event) => {
        if (event.target.tagName !== "A") window.location.hash = "#/server/" + encodeURIComponent(id);
      });
      body.appendChild(tr);
    }
    $("servers-empty").hidden = ids.length > 0;
    view.next = (doc && doc.next) || null;
    $("next-page").disabled = !view.next;
    $("prev-page").disabled = view.cursors.length === 0;
    $("first-page").disabled = view.cursors.length === 0;
    const first = view.cursors.length * PAGE_SIZE + 1;
    $("page-info").textContent = ids.length
      ? "page " + (view.cursors.length + 1) + " · " + first + "–" + (first + ids.length - 1)
      : "";
  }

  function renderDetail(id, doc, usageDoc) {
    $("detail-title").textContent = id;
    const facts = $("detail-facts");
    facts.replaceChildren();
    const badges = $("detail-badges");
    badges.replaceChildren();
    const history = $("history");
    history.replaceChildren();
    if (!doc) {
      facts.appendChild(el("dd", "muted", "No update stored for this server."));
      return;
    }
    // The receiver lists a history oldest first (the newest N of it): show the newest first.
    const items = (doc.history || []).slice().reverse();
    const latest = items[0] || {};
    badges.appendChild(pill(doc.status || latest.status));
    if (doc.stuck) badges.appendChild(stuckBadge());
    const fact = (label, value, title) => {
      facts.appendChild(el("dt", null, label));
      const dd = el("dd", null, value);
      if (title) dd.title = title;
      facts.appendChild(dd);
    };
    fact("Node", doc.node || latest.node || "—");
    const updated = isoOf(doc.updated || latest.at || latest.received_at);
    fact("Updated", ago(updated), updated);
    const usage = doc.usage;
    fact("Est. cost", usage ? cost(usage.estimated_cost) : "–", usage && usage.at);
    fact("Resources", resources(usage));
    for (const entry of items) {
      const tr = el("tr", "status-" + entry.status);
      tr.appendChild(timeCell(entry.at || entry.received_at));
      const status = el("td");
      status.appendChild(pill(entry.status));
      tr.appendChild(status);
      tr.appendChild(entry.error ? el("td", "error-value", entry.error) : el("td", "muted", "—"));
      const hasData = entry.data !== undefined && entry.data !== null;
      tr.appendChild(hasData ? el("td", "data-cell", entry.data) : el("td", "muted", "—"));
      tr.appendChild(el("td", "event-id muted", entry.event_id || "—"));
      history.appendChild(tr);
    }
    renderUsage(usageDoc);
  }

  function renderUsage(doc) {
    const body = $("usage");
    body.replaceChildren();
    let events = [];
    if (Array.isArray(doc)) events = doc;
    else if (doc) events = doc.usage || doc.events || doc.billing || [];
    for (const event of events) {
      const tr = el("tr");
      tr.appendChild(timeCell(event.at || event.timestamp || event.received_at));
      tr.appendChild(el("td", "num", num(event.memory_gb, 2) + " GB"));
      tr.appendChild(el("td", "num", num(event.cpu_vcpus, 2)));
      tr.appendChild(el("td", "num", num(event.storage_gb, 1) + " GB"));
      tr.appendChild(el("td", "num", num(event.egress_gb, 2) + " GB"));
      tr.appendChild(el("td", "num", num(event.duration_hours, 2)));
      tr.appendChild(el("td", "num", cost(event.estimated_cost)));
      body.appendChild(tr);
    }
    $("usage-empty").hidden = events.length > 0;
  }

  function setLive(ok, why) {
    const live = $("live");
    live.classList.toggle("down", !ok);
    $("live-text").textContent = ok ? "live" : "reconnecting…";
    const error = $("error");
    error.hidden = ok;
    error.textContent = ok ? "" : why;
  }

  // -- the loop -----------------------------------------------------------

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const id = view.server;
      const jobs = [getJSON("summary"), getJSON("nodes")];
      if (id === null) {
        jobs.push(getJSON(serversURL()));
      } else {
        const base = "servers/" + encodeURIComponent(id);
        jobs.push(getJSON(base + "?limit=" + HISTORY));
        jobs.push(getJSON(base + "/usage?limit=" + HISTORY).catch(() => null));
      }
      const [summary, nodes, main, usage] = await Promise.all(jobs);
      renderSummary(summary);
      renderNodes(nodes);
      if (id !== view.server) return; // the view changed meanwhile: the next round draws it
      if (id === null) renderServers(main);
      else renderDetail(id, main, usage);
      setLive(true);
    } catch (error) {
      setLive(false, String(error.message || error));
    } finally {
      busy = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (document.visibilityState === "hidden") return; // no polling in a hidden tab
    timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, POLL_MS);
  }

  function now() {
    refresh();
    schedule();
  }

  // -- navigation ---------------------------------------------------------

  function readHash() {
    const hash = window.location.hash.replace(/^#/, "");
    const [path, query] = hash.split("?");
    const match = /^\/server\/(.+)$/.exec(path || "");
    view.server = null;
    if (match) {
      try {
        view.server = decodeURIComponent(match[1]);
      } catch (e) {
        view.server = match[1]; // not percent-encoded as this page writes it: take it as it is
      }
    }
    const q = new URLSearchParams(query || "");
    if (!match) {
      view.status = q.get("status") || "";
      view.node = q.get("node") || "";
      view.prefix = q.get("prefix") || "";
    }
    $("list-view").hidden = view.server !== null;
    $("detail-view").hidden = view.server === null;
    for (const button of document.querySelectorAll("[data-status]")) {
      button.classList.toggle("active", button.dataset.status === view.status);
    }
    $("node-filter").value = view.node;
    const csv = filterQuery().toString();
    $("csv").setAttribute("href", "servers.csv" + (csv ? "?" + csv : ""));
    if (document.activeElement !== $("prefix")) $("prefix").value = view.prefix;
    document.title = (view.server ? view.server + " · " : "Fleet · ") + "lightd-sync receiver";
  }

  function listHash() {
    const query = filterQuery().toString();
    return "#/" + (query ? "?" + query : "");
  }

  function setFilter(change) {
    Object.assign(view, change);
    view.after = null;
    view.cursors = [];
    view.server = null;
    const hash = listHash();
    if (window.location.hash === hash || (hash === "#/" && !window.location.hash)) {
      readHash();
      now();
    } else {
      window.location.hash = hash; // hashchange redraws
    }
  }

  function wire() {
    for (const button of document.querySelectorAll("[data-status]")) {
      button.addEventListener("click", () => setFilter({ status: button.dataset.status }));
    }
    $("node-filter").addEventListener("change", (e) => setFilter({ node: e.target.value }));
    let typing = null;
    $("prefix").addEventListener("input", (e) => {
      clearTimeout(typing);
      typing = setTimeout(() => setFilter({ prefix: e.target.value.trim() }), 250);
    });
    $("next-page").addEventListener("click", () => {
      if (!view.next) return;
      view.cursors.push(view.after);
      view.after = view.next;
      now();
    });
    $("prev-page").addEventListener("click", () => {
      if (!view.cursors.length) return;
      view.after = view.cursors.pop();
      now();
    });
    $("first-page").addEventListener("click", () => {
      view.cursors = [];
      view.after = null;
      now();
    });
    window.addEventListener("hashchange", () => {
      const wasServer = view.server;
      readHash();
      if (wasServer === null && view.server === null) {
        view.after = null;
        view.cursors = [];
      }
      now();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") now();
      else schedule();
    });
    // "N min ago" keeps counting between answers.
    setInterval(() => {
      for (const cell of document.querySelectorAll("td.time[data-iso]")) {
        cell.textContent = ago(cell.dataset.iso);
      }
    }, 10000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    readHash();
    now();
  });
})();
