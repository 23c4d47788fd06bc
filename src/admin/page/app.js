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
    throw new Error(why);
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

const list = (v) => (Array.isArray(v) ? v : v == null || v === "" ? [] : [v]);

// ---- connectors -------------------------------------------------------------------

// The Scenario column, as the Exchange admin centre names the ends of a connector.
function scenario(c) {
  if (c.Scenario) return c.Scenario;
  if (c.ConnectorType === "OnPremises") return "On-premises";
  const spaces = c.Direction === "Send"
    ? list(c.AddressSpaces).map((a) => String(a).replace(/^smtp:/i, "").split(";")[0])
    : list(c.RecipientDomains);
  if (c.Direction !== "Inbound" && spaces.includes("*")) return "Internet";
  return "Partner";
}

function senderColumn(c) {
  if (c.SenderSummary) return c.SenderSummary;
  if (c.Direction === "Inbound") {
    const parts = [...list(c.SenderDomains), ...list(c.SenderIPAddresses)];
    if (c.TlsSenderCertificateName) parts.push("cert " + c.TlsSenderCertificateName);
    return parts.join(", ");
  }
  const to = c.Direction === "Send" ? list(c.AddressSpaces) : c.AllAcceptedDomains ? ["all accepted domains"] : list(c.RecipientDomains);
  const via = list(c.SmartHosts);
  return "to " + to.join(", ") + (via.length ? " via " + via.join(", ") : " via MX");
}

function tlsColumn(c) {
  if (c.TlsSummary) return c.TlsSummary;
  if (c.Direction === "Inbound") {
    if (!c.RequireTls) return "Opportunistic";
    return "Required" + (c.TlsSenderCertificateName ? ", certificate " + c.TlsSenderCertificateName : "");
  }
  if (c.Direction === "Outbound") {
    if (!c.TlsSettings) return "Opportunistic";
    return "Required, " + c.TlsSettings + (c.TlsDomain ? " " + c.TlsDomain : "");
  }
  if (c.IgnoreSTARTTLS) return "Never";
  if (!c.RequireTLS) return "Opportunistic";
  return "Required, " + (c.TlsAuthLevel || "EncryptionOnly") + (c.TlsDomain ? " " + c.TlsDomain : "");
}

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
    cell(tr, senderColumn(c));
    cell(tr, tlsColumn(c));
    const actions = cell(tr, "");
    actions.appendChild(button(c.Enabled ? "Disable" : "Enable", "toggle", () => setEnabled(c, !c.Enabled)));
    if (c.Direction === "Outbound" || c.Direction === "Send") {
      actions.appendChild(document.createTextNode(" "));
      actions.appendChild(button("Validate", "validate", () => validate(c)));
    }
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
    $("#report-title").textContent = c.Name + (r.success ? ": succeeded" : ": failed");
    for (const s of r.steps || []) {
      const li = document.createElement("li");
      li.className = s.ok ? "ok" : "fail";
      li.textContent = s.step + ": " + s.detail;
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

// ---- queue ------------------------------------------------------------------------

function age(seconds) {
  if (seconds == null) return "";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

async function loadQueue() {
  try {
    const items = await api("GET", "/api/queue");
    const body = $("#queue tbody");
    body.replaceChildren();
    for (const m of items) {
      const tr = document.createElement("tr");
      tr.dataset.id = m.id;
      cell(tr, m.id);
      cell(tr, m.sender === "" ? "<>" : m.sender);
      cell(tr, (m.recipients || []).map((r) => (typeof r === "string" ? r : r.address + " (" + r.state + ")")).join(", "));
      cell(tr, m.attempts);
      cell(tr, age(m.age_seconds));
      cell(tr, m.next_attempt_seconds == null ? "" : "in " + age(m.next_attempt_seconds));
      cell(tr, m.last_error || (m.recipients || []).map((r) => r.last_error).filter(Boolean).join("; "), "details");
      const actions = cell(tr, "");
      actions.appendChild(button("Retry", "retry", () => queueAction("POST", m.id, "/retry", "retry scheduled")));
      actions.appendChild(document.createTextNode(" "));
      actions.appendChild(button("Delete", "delete", () => {
        if (confirm("Delete " + m.id + " without a bounce?")) queueAction("DELETE", m.id, "", "deleted");
      }));
      body.appendChild(tr);
    }
    say(items.length + " messages in the queue");
  } catch (e) { report(e); }
}

async function queueAction(method, id, suffix, done) {
  try {
    await api(method, "/api/queue/" + encodeURIComponent(id) + suffix);
    say(id + ": " + done);
    await loadQueue();
  } catch (e) { report(e); }
}

// ---- explain ----------------------------------------------------------------------

async function explain(ev) {
  ev.preventDefault();
  const body = {
    ip: $("#explain-ip").value.trim(),
    sender: $("#explain-sender").value.trim(),
    recipients: $("#explain-recipients").value.split(",").map((s) => s.trim()).filter(Boolean),
  };
  try {
    const r = await api("POST", "/api/explain", body);
    $("#explain-result").textContent = r.text || JSON.stringify(r, null, 2);
  } catch (e) { report(e); }
}

// ---- certificates -----------------------------------------------------------------

async function loadCertificates() {
  try {
    const certs = await api("GET", "/api/certificates");
    const soon = certs.filter((c) => c.days_left < 30);
    const box = $("#certificates");
    box.hidden = soon.length === 0;
    box.textContent = soon
      .map((c) => (c.days_left < 0 ? "EXPIRED: " : "Expires in " + Math.floor(c.days_left) + " days: ") + c.subject + " (" + c.file + ")")
      .join("\n");
  } catch (e) { report(e); }
}

// ---- navigation and sign-in -------------------------------------------------------

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== name + "-view";
  say("");
  if (name === "queue") loadQueue();
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
  loadCertificates();
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
$("#explain-form").addEventListener("submit", explain);

if (sessionStorage.getItem(TOKEN_KEY)) start(); else showLogin();
