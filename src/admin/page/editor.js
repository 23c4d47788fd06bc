// connector-relay admin page: the connector editor. Create a connector by scenario, as the
// Exchange admin centre's wizard offers them, edit one, delete one after a confirmation.
// Every value is checked by the relay itself with `?whatIf=true` (the same validation as
// `connector-relay check`): an error is shown next to the field whose key it names, and the
// preview shows the lines the config file would get and the change's impact on the mail
// the relay handled in the last 7 days. Save is enabled only once the form as it is now
// has been checked.
//
// Loaded before app.js, whose helpers (api, $, say, report, button, loadConnectors) it uses
// only from functions called after the page is loaded; app.js calls editorActions() and
// validated() when it draws the connector list.
"use strict";

// ---- fields and scenarios ---------------------------------------------------------

// Kinds: text (a string), list (comma or space separated values: an array), lines (one
// value per line: a string, or an array when there are several; issuer DNs contain commas),
// bool (a checkbox), select (options), routing (UseMXRecord as MX record / smart hosts).
const FIELDS = {
  Name: { label: "Name", kind: "text" },
  SenderDomains: { label: "Sender domains", kind: "list",
    hint: "Mail whose sender (MAIL FROM) is in these domains: contoso.com, *.contoso.com, or * for every domain." },
  SenderIPAddresses: { label: "Sender IP addresses", kind: "list",
    hint: "IPv4 or IPv6 addresses or CIDR ranges, separated by commas." },
  RestrictDomainsToIPAddresses: { label: "Reject mail from these sender domains unless it comes from these IP addresses", kind: "bool" },
  RequireTls: { label: "Require TLS encryption", kind: "bool" },
  TlsSenderCertificateName: { label: "Certificate name (TlsSenderCertificateName)", kind: "text",
    hint: "The name (SAN or CN) the sender's certificate must carry: mail.contoso.com or *.contoso.com." },
  TlsSenderCertificateIssuer: { label: "Certificate issuer (TlsSenderCertificateIssuer)", kind: "lines",
    hint: "Accept the certificate only from this CA: its distinguished name (CN=..., O=...), one per line." },
  RestrictDomainsToCertificate: { label: "Reject mail from these sender domains unless the certificate name matches", kind: "bool" },
  AllAcceptedDomains: { label: "All accepted domains", kind: "bool",
    hint: "Mail for every domain in [Relay] AcceptedDomains." },
  RecipientDomains: { label: "Recipient domains", kind: "list",
    hint: "Mail for these domains uses this connector: fabrikam.com, *.fabrikam.com, or * for all mail." },
  UseMXRecord: { label: "Routing", kind: "routing", default: true },
  SmartHosts: { label: "Smart hosts", kind: "list", showIf: (v) => v.UseMXRecord === false,
    hint: "Host names, IP addresses or host:port, tried in order." },
  TlsSettings: { label: "TLS", kind: "select", options: [
    ["", "Opportunistic: TLS when the server offers it"],
    ["EncryptionOnly", "Always use TLS (EncryptionOnly)"],
    ["CertificateValidation", "Always use TLS, certificate from a trusted CA (CertificateValidation)"],
    ["DomainValidation", "Always use TLS, trusted certificate with a matching name (DomainValidation)"],
  ] },
  TlsDomain: { label: "Certificate domain (TlsDomain)", kind: "text", showIf: (v) => v.TlsSettings === "DomainValidation",
    hint: "The name the server's certificate must match; empty: the recipient domain." },
  ValidationRecipients: { label: "Validation recipients", kind: "list",
    hint: "Addresses the Validate button sends its test message to." },
  Enabled: { label: "Enabled", kind: "bool", default: true },
  Comment: { label: "Comment", kind: "text" },
};

const INBOUND_TLS = ["RequireTls", "TlsSenderCertificateName", "TlsSenderCertificateIssuer"];
const OUTBOUND_ROUTE = ["UseMXRecord", "SmartHosts", "TlsSettings", "TlsDomain", "ValidationRecipients", "Enabled", "Comment"];

// A scenario is one or more parts, each a connector: its Direction, the keys the scenario
// fixes, its fields, and their initial values for a new connector.
const SCENARIOS = [
  { id: "from-partner", title: "From partner",
    what: "Receive mail from a partner organization, recognized by its sender domains, IP addresses or certificate, with the TLS the agreement demands.",
    parts: [{ Direction: "Inbound", fixed: { ConnectorType: "Partner" }, initial: { RequireTls: true },
      fields: ["Name", "SenderDomains", "SenderIPAddresses", "RestrictDomainsToIPAddresses", ...INBOUND_TLS,
        "RestrictDomainsToCertificate", "Enabled", "Comment"] }] },
  { id: "from-onprem", title: "From on-premises",
    what: "Accept mail from your organization's own servers, recognized by IP address or certificate; they may relay to any domain.",
    parts: [{ Direction: "Inbound", fixed: { ConnectorType: "OnPremises" },
      fields: ["Name", "SenderIPAddresses", ...INBOUND_TLS, "Enabled", "Comment"] }] },
  { id: "to-partner", title: "To partner",
    what: "Send mail for a partner's domains through their MX records or smart hosts, with the TLS the agreement demands.",
    parts: [{ Direction: "Outbound", fixed: { ConnectorType: "Partner" }, initial: { TlsSettings: "DomainValidation" },
      fields: ["Name", "RecipientDomains", ...OUTBOUND_ROUTE] }] },
  { id: "to-onprem", title: "To on-premises / smart host",
    what: "Send mail for your accepted domains to your own servers, or all mail (*) through a smart host.",
    parts: [{ Direction: "Outbound", fixed: { ConnectorType: "OnPremises" }, initial: { UseMXRecord: false, AllAcceptedDomains: true },
      fields: ["Name", "AllAcceptedDomains", "RecipientDomains", ...OUTBOUND_ROUTE] }] },
  { id: "gateway", title: "Email security gateway",
    what: "A filtering service (Proofpoint, Mimecast, ...) in front of the relay: inbound mail is accepted only from the gateway's IP addresses, and all outbound mail goes through it. Creates two connectors, From NAME and To NAME, in one change.",
    sharedName: "Gateway name",
    parts: [
      { Direction: "Inbound", prefix: "From ", heading: "Inbound: mail from the gateway",
        fixed: { ConnectorType: "Partner", RestrictDomainsToIPAddresses: true },
        initial: { SenderDomains: ["*"], RequireTls: true },
        labels: { SenderIPAddresses: "Gateway IP addresses (mail is accepted only from these)" },
        fields: ["SenderIPAddresses", "SenderDomains", ...INBOUND_TLS] },
      { Direction: "Outbound", prefix: "To ", heading: "Outbound: all mail through the gateway",
        fixed: { ConnectorType: "Partner", UseMXRecord: false },
        initial: { RecipientDomains: ["*"], TlsSettings: "CertificateValidation" },
        labels: { SmartHosts: "Gateway smart hosts" },
        fields: ["SmartHosts", "RecipientDomains", "TlsSettings", "TlsDomain"] },
    ] },
];

// The scenario an existing connector is edited with (Send connectors have none).
function scenarioOf(c) {
  const onPrem = c.ConnectorType === "OnPremises";
  if (c.Direction === "Inbound") return SCENARIOS.find((s) => s.id === (onPrem ? "from-onprem" : "from-partner"));
  if (c.Direction === "Outbound") return SCENARIOS.find((s) => s.id === (onPrem ? "to-onprem" : "to-partner"));
  return null;
}

// ---- values -----------------------------------------------------------------------

const isBool = (def) => def.kind === "bool" || def.kind === "routing";
const boolDefault = (def) => def.default === true;

// A written value as the list it stands for (a key may hold one string or an array).
const asList = (v) => (v === undefined || v === null ? [] : Array.isArray(v) ? v.map(String) : [String(v)]);

// The text an input shows for a value.
function shownValue(def, v) {
  if (def.kind === "list") return asList(v).join(", ");
  if (def.kind === "lines") return asList(v).join("\n");
  return v === undefined || v === null ? "" : String(v);
}

// The value of a field as the API takes it; undefined when empty (the key is not written).
function fieldValue(def, input) {
  switch (def.kind) {
    case "bool": return input.checked;
    case "routing": return input.value === "mx";
    case "list": {
      const items = input.value.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
      return items.length ? items : undefined;
    }
    case "lines": {
      const items = input.value.split("\n").map((s) => s.trim()).filter(Boolean);
      return items.length === 0 ? undefined : items.length === 1 ? items[0] : items;
    }
    default: return input.value.trim() || undefined;
  }
}

// Two values say the same thing (a bool left out is its default).
function same(def, a, b) {
  if (isBool(def)) return (a === undefined ? boolDefault(def) : a) === (b === undefined ? boolDefault(def) : b);
  if (def.kind === "list" || def.kind === "lines") return JSON.stringify(asList(a)) === JSON.stringify(asList(b));
  return (a === undefined || a === null ? "" : String(a)) === (b === undefined || b === null ? "" : String(b));
}

// ---- the form ---------------------------------------------------------------------

// The open editor: scenario, the connector being edited (null: a new one), the request
// body the last successful check was made of, and a counter that discards stale answers.
const editor = { scenario: null, original: null, checked: null, seq: 0, timer: null };

const el = (tag, props, ...children) => {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};

function input(def, value) {
  let i;
  if (def.kind === "bool") {
    i = el("input", { type: "checkbox", checked: value === undefined ? boolDefault(def) : value === true });
  } else if (def.kind === "routing") {
    i = el("select");
    i.append(el("option", { value: "mx", textContent: "MX record of the recipient domain" }),
      el("option", { value: "smarthost", textContent: "Smart hosts" }));
    i.value = (value === undefined ? boolDefault(def) : value) ? "mx" : "smarthost";
  } else if (def.kind === "select") {
    i = el("select");
    for (const [v, label] of def.options) i.append(el("option", { value: v, textContent: label }));
    i.value = value || "";
  } else if (def.kind === "lines") {
    i = el("textarea", { rows: 2, spellcheck: false, value: shownValue(def, value) });
  } else {
    i = el("input", { type: "text", spellcheck: false, value: shownValue(def, value) });
  }
  i.className = "field-input";
  return i;
}

// One field: label, input, hint, and the place its error goes. `data-key` is the config
// key the relay names in an error; `data-part` the connector of the scenario it belongs to.
function fieldRow(part, index, key, value) {
  const def = FIELDS[key];
  const id = "f-" + index + "-" + key;
  const i = input(def, value);
  i.id = id;
  const row = el("div", { className: "field field-" + def.kind });
  row.dataset.key = key;
  row.dataset.part = String(index);
  const label = el("label", { htmlFor: id, textContent: (part.labels && part.labels[key]) || def.label });
  if (def.kind === "bool") row.append(el("span"), el("span", {}, i, " ", label));
  else row.append(label, i);
  row.append(el("span", { className: "field-error", role: "alert" }));
  if (def.hint) row.append(el("span", { className: "hint field-hint", textContent: def.hint }));
  i.addEventListener("input", () => scheduleCheck(600));
  i.addEventListener("change", () => { refreshVisibility(); scheduleCheck(0); });
  return row;
}

function nameRow(label, value) {
  const row = fieldRow({ labels: { Name: label } }, "all", "Name", value);
  row.dataset.shared = "true";
  return row;
}

function openScenarios() {
  closeDelete();
  say("");
  const box = $("#editor");
  box.replaceChildren(el("h3", { textContent: "New connector: choose the mail flow scenario" }));
  const list = el("div", { className: "scenarios" });
  for (const s of SCENARIOS) {
    const b = el("button", { type: "button", className: "scenario" },
      el("strong", { textContent: s.title }), el("span", { textContent: s.what }));
    b.dataset.scenario = s.id;
    b.addEventListener("click", () => openEditor(s, null));
    list.append(b);
  }
  box.append(list, el("p", {}, button("Cancel", "cancel", closeEditor)));
  box.hidden = false;
}

// The form of `scenario`, for a new connector or prefilled from `original` (an answer of
// GET /api/exchange/connectors/{id}).
function openEditor(scenario, original) {
  Object.assign(editor, { scenario, original, checked: null });
  editor.seq++;
  const box = $("#editor");
  const title = original ? "Edit " + original.Direction.toLowerCase() + " connector \u201c" + original.Name + "\u201d" : "New connector";
  box.replaceChildren(el("h3", { textContent: title + " \u2014 " + scenario.title }),
    el("p", { className: "hint", textContent: scenario.what }));
  const form = el("form", { id: "editor-form", noValidate: true });
  if (scenario.sharedName) form.append(nameRow(scenario.sharedName, undefined));
  scenario.parts.forEach((part, index) => {
    const fs = el("fieldset", {}, part.heading ? el("legend", { textContent: part.heading }) : null);
    for (const key of part.fields) {
      const value = original ? original[key] : (part.initial || {})[key];
      fs.append(fieldRow(part, index, key, value));
    }
    form.append(fs);
  });
  form.append(el("p", { id: "editor-error", className: "error", role: "alert" }));
  const actions = el("p", { className: "editor-actions" },
    button("Check", "check", () => check()), " ",
    button(original ? "Save" : "Create", "save", save), " ",
    button("Cancel", "cancel", closeEditor));
  form.append(actions);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); check(); });
  const preview = el("div", { id: "editor-preview", hidden: true },
    el("h4", { textContent: "Preview: what the config file would get (nothing is written until you save)" }),
    el("pre", { id: "editor-diff" }),
    el("ul", { id: "editor-summary" }),
    el("ul", { id: "editor-warnings", className: "warning-list" }),
    el("div", { id: "editor-impact", className: "impact" }));
  box.append(form, preview);
  box.hidden = false;
  refreshVisibility();
  setSaveEnabled(false);
  box.querySelector(".field-input").focus();
}

function closeEditor() {
  clearTimeout(editor.timer);
  editor.seq++;
  editor.scenario = null;
  $("#editor").hidden = true;
  $("#editor").replaceChildren();
}

const rows = () => [...document.querySelectorAll("#editor-form .field")];

// The values of part `index` of the form, as the API takes them; hidden fields count as
// empty, so that a smart host list is removed when routing goes back to MX.
function partValues(index) {
  const part = editor.scenario.parts[index];
  const values = {};
  for (const row of rows().filter((r) => r.dataset.part === String(index))) {
    const def = FIELDS[row.dataset.key];
    values[row.dataset.key] = row.hidden ? undefined : fieldValue(def, row.querySelector(".field-input"));
  }
  if (editor.scenario.sharedName) {
    const name = fieldValue(FIELDS.Name, document.getElementById("f-all-Name"));
    values.Name = name === undefined ? undefined : part.prefix + name;
  }
  return values;
}

function refreshVisibility() {
  if (!editor.scenario) return;
  editor.scenario.parts.forEach((part, index) => {
    const values = Object.assign({}, editor.original || {}, partValues(index), part.fixed);
    for (const row of rows().filter((r) => r.dataset.part === String(index))) {
      const def = FIELDS[row.dataset.key];
      row.hidden = Boolean(def.showIf) && !def.showIf(values);
    }
  });
}

// A new connector: the fixed keys and every field that says more than the default.
function createBody(index) {
  const part = editor.scenario.parts[index];
  const body = Object.assign({ Direction: part.Direction }, part.fixed);
  for (const [key, v] of Object.entries(partValues(index))) {
    if (v === undefined || (isBool(FIELDS[key]) && same(FIELDS[key], v, undefined))) continue;
    body[key] = v;
  }
  return body;
}

// An edit: only what changed; a field emptied removes its key (null).
function changeBody() {
  const body = {};
  for (const [key, v] of Object.entries(partValues(0))) {
    const before = editor.original[key];
    if (same(FIELDS[key], v, before)) continue;
    body[key] = v === undefined ? null : v;
  }
  return body;
}

// The request the form stands for now: method, path and body (null: nothing to send).
function request() {
  if (editor.original) {
    const body = changeBody();
    const path = "/api/exchange/connectors/" + encodeURIComponent(editor.original.Identity);
    return { method: "PUT", path, body: Object.keys(body).length ? body : null };
  }
  const bodies = editor.scenario.parts.map((_, i) => createBody(i));
  return { method: "POST", path: "/api/exchange/connectors", body: bodies.length === 1 ? bodies[0] : bodies };
}

// ---- checking and saving ----------------------------------------------------------

function scheduleCheck(delay) {
  clearTimeout(editor.timer);
  setSaveEnabled(false);
  editor.timer = setTimeout(check, delay);
}

function setSaveEnabled(on) {
  const b = document.querySelector("#editor button.save");
  if (b) b.disabled = !on;
}

function clearErrors() {
  for (const row of rows()) {
    row.classList.remove("invalid");
    row.querySelector(".field-error").textContent = "";
  }
  const e = document.getElementById("editor-error");
  if (e) e.textContent = "";
}

// The row of the field a refused key names, in connector `index` of the scenario.
function rowFor(key, index) {
  return rows().find((r) => r.dataset.key === key && !r.hidden &&
    (r.dataset.part === String(index) || r.dataset.shared === "true"));
}

// Each problem next to its field; the ones about no field of the form (another key, the
// file as a whole) above the buttons.
function showErrors(data, fallback) {
  clearErrors();
  const index = data && data.index !== undefined ? data.index : 0;
  const problems = data && data.errors && data.errors.length ? data.errors
    : [{ key: (data && data.key) || "", error: (data && data.error) || fallback, message: fallback }];
  const elsewhere = [];
  for (const p of problems) {
    const row = rowFor(p.key, index);
    if (row) {
      row.classList.add("invalid");
      const span = row.querySelector(".field-error");
      span.textContent = (span.textContent ? span.textContent + " " : "") + p.error;
    } else {
      elsewhere.push(p.message || (p.key ? p.key + ": " : "") + p.error);
    }
  }
  document.getElementById("editor-error").textContent = elsewhere.join("\n");
}

const lineOf = (w) => { const m = /:(\d+): /.exec(w); return m ? Number(m[1]) : 0; };

// The loader's warnings about the lines this change writes (not the rest of the file):
// each hunk of the diff starts at "@@ line N" of the new file, followed by its lines.
function ownWarnings(r) {
  const written = [];
  let at = 0;
  for (const l of r.Diff || []) {
    if (l.startsWith("@@ line ")) at = Number(l.slice(8));
    else if (l.startsWith("+")) written.push(at++);
  }
  return (r.Warnings || []).filter((w) => written.includes(lineOf(w)));
}

function summary(c) {
  if (!c) return "";
  const who = c.Direction === "Inbound" ? "senders: " + c.SenderSummary : "to " + c.RecipientSummary;
  return c.Name + " \u2014 " + c.Direction + ", " + scenario(c) + ", " + (c.Enabled ? "enabled" : "disabled") + "; " + who + "; TLS: " + c.TlsSummary;
}

// Diff lines (`@@ line N`, `-old`, `+new`) into `pre`, coloured by kind.
function showDiff(pre, lines) {
  pre.classList.add("diff");
  pre.replaceChildren(...lines.map((l) => el("span", {
    className: l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "at",
    textContent: l + "\n",
  })));
  if (!lines.length) pre.textContent = "(no change to the file)";
}

const showDiffIn = (pre, lines) => { showDiff(pre, lines); return pre; };

function showPreview(r) {
  showDiff($("#editor-diff"), r.Diff || []);
  const connectors = r.Connectors || [r.Connector];
  listItems("#editor-summary", connectors.filter(Boolean).map(summary));
  listItems("#editor-warnings", ownWarnings(r).map((w) => "Warning: " + w));
  showImpact($("#editor-impact"), r);
  $("#editor-preview").hidden = false;
}

// ---- impact on recorded mail ------------------------------------------------------

// The change's impact (the `Impact` of a whatIf answer: the relay replays the last 7
// days of its trace through the configuration the change would make): a change that
// opens the relay says so first, then the sentence, then a table of who would be
// refused or accepted, by rule, with counts, and the recipients that would leave by
// another route or TLS level.
function showImpact(box, r) {
  box.replaceChildren(el("h4", { textContent: "Impact on the mail of the last 7 days" }));
  const i = r.Impact;
  if (!i) {
    box.append(el("p", { className: "hint", textContent: "Not available: " + (r.ImpactError || "no trace") }));
    return;
  }
  if (i.OpensRelay) {
    box.append(el("p", { className: "impact-relay", role: "alert",
      textContent: "OPENS RELAY: with this change the relay would pass mail for domains that are not yours. " + relayWords(i.Relay) }));
  }
  box.append(el("p", { className: "impact-summary", textContent: i.Summary }));
  const rows = impactRows(i);
  if (rows.length) box.append(impactTable(rows));
  const assumptions = (i.Assumptions || []).map((a) => el("li", { textContent: a }));
  box.append(el("details", { className: "hint impact-assumptions" },
    el("summary", { textContent: "What the replay assumes" }), el("ul", {}, ...assumptions)));
}

function relayWords(relay) {
  const parts = [];
  if (relay.Anyone) parts.push("Anyone, from any address, could relay.");
  for (const c of relay.Clients || []) parts.push(c.ClientIp + " <" + c.Sender + "> could relay through " + (c.Connector || "no connector") + ".");
  if (relay.Recipients) parts.push(relay.Recipients + " recorded recipient(s) outside the accepted domains would have been relayed.");
  return parts.join(" ");
}

// One row per sender and rule: [what, rule, sender, transactions, messages, recipients].
function impactRows(i) {
  const rows = [];
  for (const g of i.Refused || []) {
    const what = g.Was ? "Refused otherwise (was " + g.Was + ")" : "Refused at " + g.Stage;
    const rule = g.Rule + (g.Connector ? " (" + g.Connector + ")" : "");
    for (const s of g.Senders) rows.push(["refused", what, rule, s]);
    if (g.MoreSenders) rows.push(["refused", what, rule, { Sender: "+" + g.MoreSenders + " more senders" }]);
  }
  for (const g of i.Accepted || []) {
    const what = (g.Relay ? "RELAYED" : "Accepted") + " at " + g.Stage;
    const rule = "was " + g.WasRule + (g.WasConnector ? " (" + g.WasConnector + ")" : "");
    for (const s of g.Senders) rows.push([g.Relay ? "relay" : "accepted", what, rule, s]);
  }
  for (const m of i.Rerouted || []) {
    const route = (c) => (c.Connector || "default MX route") + ", TLS " + c.TlsLevel;
    rows.push(["rerouted", "Rerouted: " + m.Domain, route(m.From) + " \u2192 " + route(m.To),
      { Sender: "", Transactions: m.Messages, Messages: m.Messages, Recipients: m.Recipients }]);
  }
  return rows;
}

function impactTable(rows) {
  const head = el("tr");
  for (const h of ["", "Rule", "Sender", "Transactions", "Messages", "Recipients"]) head.append(el("th", { textContent: h }));
  const body = el("tbody");
  for (const [kind, what, rule, s] of rows) {
    const tr = el("tr", { className: "impact-" + kind });
    for (const v of [what, rule, s.Sender, s.Transactions, s.Messages, s.Recipients]) {
      tr.append(el("td", { textContent: v === undefined ? "" : String(v) }));
    }
    body.append(tr);
  }
  return el("table", { className: "impact-table" }, el("thead", {}, head), body);
}

// Asks the relay what the form would do (whatIf): errors next to their fields, or the
// preview, and Save enabled for exactly this form.
async function check() {
  clearTimeout(editor.timer);
  if (!editor.scenario) return;
  const mine = ++editor.seq;
  const req = request();
  setSaveEnabled(false);
  if (req.body === null) {
    clearErrors();
    $("#editor-preview").hidden = true;
    document.getElementById("editor-error").textContent = "Nothing changed yet.";
    return;
  }
  try {
    const r = await api(req.method, req.path + "?whatIf=true", req.body);
    if (mine !== editor.seq) return;
    clearErrors();
    showPreview(r);
    editor.checked = JSON.stringify(req);
    setSaveEnabled(true);
  } catch (e) {
    if (mine !== editor.seq) return;
    if (e instanceof Unauthorized) return report(e);
    $("#editor-preview").hidden = true;
    showErrors(e.data, e.message);
  }
}

async function save() {
  const req = request();
  if (!req.body || JSON.stringify(req) !== editor.checked) return check();
  const mine = ++editor.seq;
  const verb = editor.original ? "Saved " : "Created ";
  setSaveEnabled(false);
  try {
    const r = await api(req.method, req.path, req.body);
    if (mine !== editor.seq) return;
    const names = (r.Connectors || [r.Connector]).filter(Boolean).map((c) => c.Name);
    closeEditor();
    await loadConnectors();
    say(verb + names.join(" and ") + "; the change is live.");
  } catch (e) {
    if (e instanceof Unauthorized) return report(e);
    showErrors(e.data, e.message);
  }
}

// ---- the connector list -----------------------------------------------------------

async function editConnector(c) {
  try {
    const current = await api("GET", "/api/exchange/connectors/" + encodeURIComponent(c.Identity));
    closeDelete();
    openEditor(scenarioOf(current), current);
    say("");
  } catch (e) { report(e); }
}

function closeDelete() {
  const box = $("#delete-confirm");
  box.hidden = true;
  box.replaceChildren();
}

// Delete asks first: the relay says (whatIf) which lines of the config file would go, or
// why the connector cannot go.
async function askDelete(c) {
  closeEditor();
  say("");
  const box = $("#delete-confirm");
  const path = "/api/exchange/connectors/" + encodeURIComponent(c.Identity);
  box.replaceChildren(el("h3", { textContent: "Delete " + c.Direction.toLowerCase() + " connector \u201c" + c.Name + "\u201d?" }));
  box.hidden = false;
  try {
    const r = await api("DELETE", path + "?whatIf=true");
    const impact = el("div", { className: "impact" });
    showImpact(impact, r);
    box.append(el("p", { textContent: "These lines are removed from the config file; the change is live at once:" }),
      showDiffIn(el("pre", { className: "delete-diff" }), r.Diff || []), impact,
      el("p", {}, button("Delete", "confirm-delete danger", () => doDelete(c, path)), " ", button("Cancel", "cancel", closeDelete)));
  } catch (e) {
    if (e instanceof Unauthorized) return report(e);
    box.append(el("p", { className: "error", textContent: e.message }), el("p", {}, button("Close", "cancel", closeDelete)));
  }
}

async function doDelete(c, path) {
  try {
    await api("DELETE", path);
    closeDelete();
    await loadConnectors();
    say("Deleted " + c.Name + "; the change is live.");
  } catch (e) {
    if (e instanceof Unauthorized) return report(e);
    $("#delete-confirm").append(el("p", { className: "error", textContent: e.message }));
  }
}

// The Edit and Delete buttons of a row (Send connectors have no scenario to edit with).
function editorActions(c, actions) {
  if (scenarioOf(c)) {
    actions.append(" ", button("Edit", "edit", () => editConnector(c)));
  }
  actions.append(" ", button("Delete", "delete", () => askDelete(c)));
}

// The Validated column: IsValidated and LastValidationTimestamp, which validation records
// for Outbound connectors only.
function validated(c) {
  if (c.Direction !== "Outbound") return "\u2014";
  const when = c.LastValidationTimestamp ? String(c.LastValidationTimestamp) : "";
  if (c.IsValidated === true) return "Yes" + (when ? ", " + when : "");
  if (c.IsValidated === false) return "No: the last validation failed" + (when ? " (last success " + when + ")" : "");
  return "Not validated";
}

document.getElementById("new-connector").addEventListener("click", () => openScenarios());
