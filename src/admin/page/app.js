// connector-relay admin page: plain JavaScript over the admin API (no build step).
// The token lives in sessionStorage (this tab only) and goes in every request as
// `Authorization: Bearer ...`.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "connector-relay-token";

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) throw new Unauthorized();
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!res.ok) {
    const why = data && data.error ? (data.key ? data.key + ": " : "") + data.error : res.status + " " + text;
    const err = new Error(why);
    err.data = data;
    throw err;
  }
  return data;
}

// Shows what went wrong; a refused token sends the user back to the sign-in form.
function report(err) {
  if (err instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("The token was refused.");
    return;
  }
  say(err.message, true);
}

function say(text, isError) {
  const m = $("#message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}


// ---- connectors -------------------------------------------------------------------

// The Scenario column (the server computes Partner / OnPremises / Internet from the
// connector; the page spells OnPremises as the issue and the Exchange admin centre do).
const scenario = (c) => (c.Scenario === "OnPremises" ? "On-premises" : c.Scenario || "");

async function loadConnectors() {
  const connectors = await api("GET", "/api/exchange/connectors");
  const body = $("#connectors tbody");
  body.replaceChildren();
  for (const c of connectors) {
    const tr = document.createElement("tr");
    tr.dataset.identity = c.Identity;
    tr.dataset.name = c.Name;
    cell(tr, c.Name, "name");
    cell(tr, c.Direction);
    cell(tr, scenario(c));
    cell(tr, c.Enabled ? "Enabled" : "Disabled", "status " + (c.Enabled ? "status-on" : "status-off"));
    cell(tr, c.Direction === "Inbound" ? c.SenderSummary : "to " + (c.RecipientSummary || ""));
    cell(tr, c.TlsSummary);
    cell(tr, validated(c), "validated");
    const actions = cell(tr, "", "actions");
    actions.appendChild(button(c.Enabled ? "Disable" : "Enable", "toggle", () => setEnabled(c, !c.Enabled)));
    if (c.Direction === "Outbound" || c.Direction === "Send") {
      actions.appendChild(document.createTextNode(" "));
      actions.appendChild(button("Validate", "validate", () => validate(c)));
    }
    editorActions(c, actions); // Edit, Delete: editor.js
    body.appendChild(tr);
  }
}

async function setEnabled(c, enabled) {
  try {
    await api("PUT", "/api/exchange/connectors/" + encodeURIComponent(c.Identity) + "/status", { Enabled: enabled });
    say(c.Name + (enabled ? " enabled" : " disabled") + "; the change is live.");
    await loadConnectors();
  } catch (e) { report(e); }
}

async function validate(c) {
  const box = $("#report");
  $("#report-title").textContent = c.Name + " (running...)";
  $("#report-steps").replaceChildren();
  box.hidden = false;
  try {
    const r = await api("POST", "/api/exchange/connectors/" + encodeURIComponent(c.Identity) + "/validate");
    $("#report-title").textContent = c.Name + (r.Success ? ": succeeded" : ": failed") +
      (r.Recorded ? " (recorded in the config)" : "");
    for (const s of r.Steps || []) {
      const li = document.createElement("li");
      li.className = s.Ok ? "ok" : "fail";
      li.textContent = s.Step + ": " + s.Detail;
      $("#report-steps").appendChild(li);
    }
    await loadConnectors();
  } catch (e) {
    $("#report-title").textContent = c.Name + ": could not run";
    report(e);
  }
}

// ---- message trace ----------------------------------------------------------------

function details(row) {
  const parts = [];
  if (row.client_ip) parts.push("client " + row.client_ip + (row.helo ? " (" + row.helo + ")" : ""));
  if (row.rule) parts.push("rule " + row.rule);
  if (row.host) parts.push("host " + row.host + (row.ip ? " [" + row.ip + "]" : ""));
  if (row.tls) parts.push("tls " + row.tls);
  if (row.certificate) parts.push("cert " + row.certificate);
  if (row.reply) parts.push("reply " + row.reply);
  if (row.detail) parts.push(row.detail);
  return parts.join("; ");
}

async function searchTrace(ev) {
  if (ev) ev.preventDefault();
  const q = new URLSearchParams();
  for (const input of $("#trace-form").querySelectorAll("input")) {
    if (input.value.trim()) q.set(input.name, input.value.trim());
  }
  try {
    const rows = await api("GET", "/api/trace?" + q.toString());
    const body = $("#trace-results tbody");
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.className = "event-" + r.event;
      cell(tr, new Date(r.time_ms).toISOString().replace(".000Z", "Z"));
      cell(tr, r.node, "node");
      cell(tr, r.event, "event");
      cell(tr, r.queue_id);
      cell(tr, r.sender);
      cell(tr, r.recipient);
      cell(tr, r.connector);
      cell(tr, details(r), "details");
      body.appendChild(tr);
    }
    say(rows.length ? rows.length + " trace rows" : "No trace rows match.");
  } catch (e) { report(e); }
}

// ---- delivery queues --------------------------------------------------------------

// The Status column's class: Retry and Suspended stand out.
const statusClass = (status) => "status status-" + String(status || "").toLowerCase();

async function loadQueues() {
  try {
    const queues = await api("GET", "/api/queues");
    const body = $("#queues tbody");
    body.replaceChildren();
    for (const q of queues) {
      const tr = document.createElement("tr");
      tr.dataset.identity = q.Identity;
      tr.dataset.nextHop = q.NextHopDomain;
      cell(tr, q.Identity, "identity");
      cell(tr, q.DeliveryType);
      cell(tr, q.NextHopDomain);
      cell(tr, q.NextHopConnector || "(default MX route)");
      cell(tr, q.Status, statusClass(q.Status));
      cell(tr, q.MessageCount, "count");
      cell(tr, q.ActiveConnections);
      cell(tr, q.LastError, "details");
      cell(tr, q.NextRetryTime || "");
      const actions = cell(tr, "", "actions");
      actions.appendChild(button("Retry", "retry", () => queuesAction(q, "POST", "/retry", undefined, "Retry-Queue done")));
      actions.appendChild(document.createTextNode(" "));
      if (q.Status === "Suspended") {
        actions.appendChild(button("Resume", "resume", () => queuesAction(q, "PUT", "/status", { Status: "Active" }, "resumed")));
      } else {
        actions.appendChild(button("Suspend", "suspend", () => queuesAction(q, "PUT", "/status", { Status: "Suspended" }, "suspended")));
      }
      body.appendChild(tr);
    }
    say(queues.length + (queues.length === 1 ? " delivery queue" : " delivery queues"));
  } catch (e) { report(e); }
}

async function queuesAction(q, method, suffix, body, done) {
  try {
    await api(method, "/api/queues/" + encodeURIComponent(q.Identity) + suffix, body);
    await loadQueues();
    say(q.Identity + " (" + q.NextHopDomain + "): " + done);
  } catch (e) { report(e); }
}

// ---- messages ---------------------------------------------------------------------

function age(seconds) {
  if (seconds == null) return "";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function nextAttempt(m) {
  if (m.Status === "Active") return "now (attempt under way)";
  if (m.Status === "Suspended") return "when resumed";
  return m.NextRetryTime || "";
}

async function loadQueue() {
  try {
    const items = await api("GET", "/api/queue");
    const body = $("#queue tbody");
    body.replaceChildren();
    for (const m of items) {
      const tr = document.createElement("tr");
      tr.dataset.id = m.Identity;
      cell(tr, m.Identity);
      cell(tr, m.FromAddress === "" ? "<>" : m.FromAddress);
      cell(tr, (m.Recipients || []).map((r) => r.Address + " (" + r.Status + ")").join(", "));
      cell(tr, m.Status, statusClass(m.Status));
      cell(tr, (m.Queues || []).join(", "));
      cell(tr, m.RetryCount);
      cell(tr, age(m.AgeSeconds));
      cell(tr, nextAttempt(m));
      cell(tr, m.LastError, "details");
      const actions = cell(tr, "", "actions");
      actions.appendChild(button("Retry", "retry", () => queueAction("POST", m.Identity, "/retry", undefined, "retry scheduled")));
      actions.appendChild(document.createTextNode(" "));
      if (m.Status === "Suspended") {
        actions.appendChild(button("Resume", "resume", () => queueAction("PUT", m.Identity, "/status", { Status: "Active" }, "resumed")));
      } else {
        actions.appendChild(button("Suspend", "suspend", () => queueAction("PUT", m.Identity, "/status", { Status: "Suspended" }, "suspended")));
      }
      actions.appendChild(document.createTextNode(" "));
      actions.appendChild(button("Delete", "delete", () => {
        if (confirm("Delete " + m.Identity + " without a bounce?")) queueAction("DELETE", m.Identity, "", undefined, "deleted");
      }));
      body.appendChild(tr);
    }
    say(items.length + " messages in the queue");
  } catch (e) { report(e); }
}

async function queueAction(method, id, suffix, body, done) {
  try {
    await api(method, "/api/queue/" + encodeURIComponent(id) + suffix, body);
    await loadQueue();
    say(id + ": " + done);
  } catch (e) { report(e); }
}

// ---- import -----------------------------------------------------------------------

// The text the last successful preview was made of: Apply sends exactly that text, so
// what is applied is what was previewed.
let previewed = null;

function listItems(sel, items) {
  const ul = $(sel);
  ul.replaceChildren();
  for (const t of items) {
    const li = document.createElement("li");
    li.textContent = t;
    ul.appendChild(li);
  }
}

const shown = (v) => (v === null || v === undefined ? "(not set)" : JSON.stringify(v));

function showImport(r) {
  const changes = [];
  for (const c of r.Connectors || []) {
    const keys = (c.Changes || []).map((k) => k.Key + ": " + shown(k.Old) + " \u2192 " + shown(k.New));
    changes.push(c.Action + " " + c.Direction + "Connector \"" + c.Name + "\"" + (keys.length ? " \u2014 " + keys.join("; ") : ""));
  }
  listItems("#import-changes", changes);
  const dropped = [...(r.Notes || [])];
  for (const c of r.Connectors || []) dropped.push(...(c.Dropped || []));
  listItems("#import-dropped", dropped.length ? dropped : ["nothing"]);
  $("#import-diff").textContent = (r.Diff || []).join("\n");
  $("#import-result").hidden = false;
}

async function importText(whatIf) {
  const text = whatIf ? $("#import-text").value : previewed;
  listItems("#import-errors", []);
  try {
    const r = await api("POST", "/api/exchange/import" + (whatIf ? "?whatIf=true" : ""), { Text: text, FileName: "pasted" });
    showImport(r);
    if (whatIf) {
      previewed = text;
      $("#import-apply").disabled = false;
      say("Preview only: nothing was written. Apply makes these changes.");
    } else {
      previewed = null;
      $("#import-apply").disabled = true;
      say("Imported " + (r.Connectors || []).length + " connector change(s); the change is live.");
      await loadConnectors();
    }
  } catch (e) {
    if (e.data && e.data.errors) {
      listItems("#import-errors", e.data.errors.map((x) => x.message || x.error));
      $("#import-result").hidden = true;
      say("The import was refused: " + e.data.errors.length + " error(s).", true);
    } else {
      report(e);
    }
  }
}

// ---- explain ----------------------------------------------------------------------

async function explain(ev) {
  ev.preventDefault();
  const body = {
    ClientIp: $("#explain-ip").value.trim(),
    Sender: $("#explain-sender").value.trim(),
    Recipients: $("#explain-recipients").value.split(",").map((s) => s.trim()).filter(Boolean),
  };
  try {
    const r = await api("POST", "/api/explain", body);
    $("#explain-result").textContent = r.Text || JSON.stringify(r, null, 2);
  } catch (e) { report(e); }
}

// ---- certificates and back pressure (from /api/status) ----------------------------

async function loadStatus() {
  try {
    const status = await api("GET", "/api/status");
    const bp = status.BackPressure || { State: "Normal" };
    const pressed = $("#back-pressure");
    pressed.hidden = bp.State === "Normal";
    pressed.textContent = "Back pressure " + bp.State + ": new mail gets 452 4.3.1 " +
      (bp.State === "High" ? "from every sender" : "except from OnPremises connectors") +
      " (" + bp.Reason + ")";
    const soon = (status.Certificates || []).filter((c) => c.ExpiringSoon);
    const box = $("#certificates");
    box.hidden = soon.length === 0;
    box.textContent = soon
      .map((c) => (c.DaysLeft < 0 ? "EXPIRED: " : "Expires in " + Math.floor(c.DaysLeft) + " days: ") +
        c.Subject + " (" + c.File + ")")
      .join("\n");
  } catch (e) { report(e); }
}

// ---- navigation and sign-in -------------------------------------------------------

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== name + "-view";
  say("");
  if (name === "queue") loadQueue();
  if (name === "queues") loadQueues();
  loadStatus();
}

function showLogin(error) {
  $("#login-view").hidden = false;
  $("#tabs").hidden = true;
  $("#logout").hidden = true;
  for (const s of document.querySelectorAll(".tab")) s.hidden = true;
  $("#login-error").textContent = error || "";
}

async function start() {
  try {
    await loadConnectors();
  } catch (e) {
    report(e);
    return;
  }
  $("#login-view").hidden = true;
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  showTab("connectors");
}

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  start();
});
$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
});
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
$("#trace-form").addEventListener("submit", searchTrace);
$("#queue-refresh").addEventListener("click", loadQueue);
$("#queues-refresh").addEventListener("click", loadQueues);
$("#explain-form").addEventListener("submit", explain);
$("#import-preview").addEventListener("click", () => importText(true));
$("#import-apply").addEventListener("click", () => importText(false));
// A changed text needs a new preview before it can be applied.
$("#import-text").addEventListener("input", () => { $("#import-apply").disabled = true; });

if (sessionStorage.getItem(TOKEN_KEY)) start(); else showLogin();
