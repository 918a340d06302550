// Charter console: live service view, governance, ledger explorer, receipt verifier.
// Everything is read from the node that served this page (same origin, CSP connect-src
// 'self'); every value from the network is put in the page as text, never as HTML.

import {
  certificateId, governanceEnvelope, importSigningKey, parsePemCertificate, verifyReceipt, bytesToHex,
} from "./crypto.js";

const GOV_API = "api-version=2024-07-01";
const SAMPLE_MS = 2000;
const SAMPLES_KEPT = 150; // 5 minutes
const state = { samples: [], member: null, serviceCertPem: "", timer: null };

// ------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: String(response.status), message: response.statusText };
    throw Object.assign(new Error(`${error.code}: ${error.message}`), { status: response.status, code: error.code });
  }
  return body;
}

function shortId(id) {
  return id ? `${id.slice(0, 12)}…` : "";
}

function replaceRows(table, rows) {
  table.tBodies[0].replaceChildren(...rows);
}

// ------------------------------------------------------------------ tabs
const VIEWS = ["service", "governance", "ledger", "receipt"];

function showView(name, focus = false) {
  if (!VIEWS.includes(name)) name = "service";
  for (const view of VIEWS) {
    const tab = $(`tab-${view}`);
    const selected = view === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`view-${view}`).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "governance") refreshGovernance();
  if (name === "ledger" && !$("ledger-entries").hasChildNodes()) loadEntries();
}

function setUpTabs() {
  for (const view of VIEWS) $(`tab-${view}`).addEventListener("click", () => showView(view));
  $("tabs").addEventListener("keydown", (event) => {
    const current = VIEWS.findIndex((v) => $(`tab-${v}`).getAttribute("aria-selected") === "true");
    let next = null;
    if (event.key === "ArrowRight") next = (current + 1) % VIEWS.length;
    if (event.key === "ArrowLeft") next = (current + VIEWS.length - 1) % VIEWS.length;
    if (event.key === "Home") next = 0;
    if (event.key === "End") next = VIEWS.length - 1;
    if (next !== null) {
      event.preventDefault();
      showView(VIEWS[next], true);
    }
  });
  window.addEventListener("hashchange", () => showView(location.hash.slice(1)));
}

// ------------------------------------------------------------------ service view
function card(label, value, id) {
  return el("div", {}, el("dt", {}, label), el("dd", { id }, value));
}

const ROLE_NAMES = { Follower: "a backup", Candidate: "a candidate", PreVoteCandidate: "a candidate" };

function ago(ms) {
  if (ms < 1000) return `${ms} ms ago`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s ago`;
  return `${Math.floor(ms / 60000)} min ago`;
}

// What the serving node's /node/consensus says of `nodeId`, and where each figure comes from.
// A primary knows every peer's acknowledged seqno and when it last answered; a backup knows
// its own seqnos and when it last heard the primary, and nothing of the other backups.
function consensusFigures(details, nodeId) {
  const none = "—";
  if (!details) return { heard: none, ledger: none, commit: none, source: "unknown", why: "/node/consensus did not answer" };
  if (nodeId === details.node_id) {
    return {
      heard: "serving this page", ledger: details.durable_seqno, commit: details.commit_seqno, source: "self",
      why: `this node's own state (last appended seqno ${details.last_seqno})`,
    };
  }
  const ack = (details.acks || {})[nodeId];
  if (ack) {
    return {
      heard: ago(ack.last_received_ms), ledger: ack.seqno, commit: ack.commit_seqno, source: "ack",
      why: "its last acknowledgement to the primary serving this page",
    };
  }
  if (nodeId === details.primary_id && details.primary_last_received_ms !== undefined) {
    return {
      heard: ago(details.primary_last_received_ms), ledger: none, commit: none, source: "heard-primary",
      why: "when this backup last heard its primary; the primary's seqnos are on the primary's console",
    };
  }
  const leader = details.leadership_state === "Leader";
  return {
    heard: none, ledger: none, commit: none, source: leader ? "not-replicated" : "primary-only",
    why: leader ? "this primary does not replicate to it" : "known to the primary only",
  };
}

async function refreshService() {
  let network, nodes, commit, metrics;
  try {
    [network, nodes, commit, metrics] = await Promise.all([
      getJson("/node/network"), getJson("/node/network/nodes"), getJson("/node/commit"), getJson("/node/metrics"),
    ]);
  } catch (error) {
    $("served-by").textContent = `cannot reach the node: ${error.message}`;
    return;
  }
  // A node still starting has no consensus yet (503): the rest of the view still shows.
  const details = await getJson("/node/consensus").then((body) => body.details, () => null);
  state.serviceCertPem = network.service_certificate || "";
  let expiry = "unknown";
  if (state.serviceCertPem) {
    try {
      const cert = parsePemCertificate(state.serviceCertPem);
      const days = Math.floor((cert.notAfter - Date.now()) / 86400000);
      expiry = `${cert.notAfter.toISOString().slice(0, 10)} (${days} days)`;
    } catch (error) {
      expiry = `unreadable: ${error.message}`;
    }
  }
  const primary = nodes.nodes.find((n) => n.primary);
  $("served-by").textContent = `served by ${location.host} · service ${network.service_status} · view ${network.current_view}`;
  $("service-cards").replaceChildren(
    card("Service status", network.service_status || "unknown", "card-status"),
    card("Primary", primary ? shortId(primary.node_id) : "none", "card-primary"),
    card("Current view", network.current_view, "card-view"),
    card("Committed", commit.transaction_id, "card-commit"),
    card("This node: last seqno", metrics.last_seqno, "card-last"),
    card("This node: uncommitted", metrics.uncommitted, "card-uncommitted"),
    card("Service certificate expires", expiry, "card-expiry"),
    card("Requests / errors", `${metrics.requests} / ${metrics.errors}`, "card-requests"),
  );
  const rpcAddress = (n) => ((n.rpc_interfaces || {}).primary_rpc_interface || {}).published_address || "";
  replaceRows($("nodes-table"), nodes.nodes.map((n) => {
    const f = consensusFigures(details, n.node_id);
    return el("tr", { "data-node-id": n.node_id, "data-source": f.source },
      el("td", { class: "mono", title: n.node_id }, shortId(n.node_id)),
      el("td", {}, n.primary ? el("span", { class: "badge primary" }, "primary") : "backup"),
      el("td", {}, n.status),
      el("td", { class: "mono" }, rpcAddress(n)),
      el("td", { "data-field": "last-heard" }, f.heard),
      el("td", { "data-field": "ledger-seqno", class: "num" }, f.ledger),
      el("td", { "data-field": "commit-seqno", class: "num" }, f.commit),
      el("td", { "data-field": "source", class: "muted" }, f.why),
      el("td", { class: "num" }, n.last_written));
  }));
  const note = $("nodes-source");
  if (!details) {
    note.replaceChildren("This node reports no consensus state yet (GET /node/consensus did not answer).");
  } else if (details.leadership_state === "Leader") {
    note.replaceChildren("This page is served by the primary: last heard, ledger and commit seqnos of every node come from their acknowledgements to it (GET /node/consensus).");
  } else {
    const leader = nodes.nodes.find((n) => n.node_id === details.primary_id);
    const address = leader ? rpcAddress(leader) : "";
    note.replaceChildren(
      `This page is served by ${ROLE_NAMES[details.leadership_state] || "a retired node"}, which knows its own seqnos and when it last heard the primary, not the other nodes' figures (GET /node/consensus). `,
      address ? el("a", { href: `https://${address}/console/#service`, id: "primary-console-link" }, "Open the primary's console for every node.") : "",
    );
  }
  const now = Date.now();
  state.samples.push({ t: now, commit: metrics.commit_seqno, errors: metrics.errors });
  if (state.samples.length > SAMPLES_KEPT) state.samples.shift();
  drawChart();
  drawErrors();
}

function drawChart() {
  const svg = $("commit-chart");
  const title = svg.querySelector("title");
  const rates = [];
  for (let i = 1; i < state.samples.length; i++) {
    const a = state.samples[i - 1];
    const b = state.samples[i];
    rates.push({ t: b.t, rate: Math.max(0, (b.commit - a.commit) / ((b.t - a.t) / 1000)) });
  }
  const ns = "http://www.w3.org/2000/svg";
  const make = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  const max = Math.max(1, ...rates.map((r) => r.rate));
  const points = rates.map((r, i) => {
    const x = 40 + (i / Math.max(1, SAMPLES_KEPT - 2)) * 670;
    const y = 185 - (r.rate / max) * 165;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const label = (y, text) => { const t = make("text", { x: 2, y }); t.textContent = text; return t; };
  svg.replaceChildren(title,
    make("line", { class: "axis", x1: 40, y1: 185, x2: 715, y2: 185 }),
    make("line", { class: "axis", x1: 40, y1: 20, x2: 40, y2: 185 }),
    label(24, max.toFixed(1)), label(188, "0"),
    make("polyline", { class: "line", points: points.join(" ") }));
  const last = rates.length ? rates[rates.length - 1].rate : 0;
  $("commit-chart-caption").textContent = `${last.toFixed(1)} committed tx/s now, peak ${max.toFixed(1)}; commit at seqno ${state.samples[state.samples.length - 1].commit}.`;
}

function drawErrors() {
  const items = [];
  for (let i = state.samples.length - 1; i > 0 && items.length < 10; i--) {
    const delta = state.samples[i].errors - state.samples[i - 1].errors;
    if (delta > 0) items.push(el("li", {}, `${new Date(state.samples[i].t).toLocaleTimeString()}: ${delta} error response(s)`));
  }
  $("errors-list").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No error responses while this page was open.")]));
}

// ------------------------------------------------------------------ governance view
async function readFile(input) {
  const file = input.files && input.files[0];
  if (!file) return null;
  if (file.size > 64 * 1024) throw new Error(`${file.name} is larger than 64 KiB`);
  return file.text();
}

async function loadMember() {
  const status = $("member-status");
  try {
    const certPem = await readFile($("member-cert"));
    const keyPem = await readFile($("member-key"));
    if (!certPem || !keyPem) {
      status.textContent = "Load both the certificate and the key.";
      return;
    }
    const key = await importSigningKey(keyPem);
    const id = await certificateId(certPem);
    state.member = { id, key, cn: parsePemCertificate(certPem).subjectCN };
    status.textContent = `Acting as member ${state.member.cn || ""} ${id} (key loaded in this page only).`;
    refreshGovernance();
  } catch (error) {
    state.member = null;
    status.textContent = `Could not load the member identity: ${error.message}`;
  }
}

async function signedPost(path, msgType, payloadText, proposalId = null) {
  const envelope = await governanceEnvelope(state.member.key, state.member.id, msgType,
    new TextEncoder().encode(payloadText), { proposalId });
  const response = await fetch(`${path}?${GOV_API}`, {
    method: "POST", headers: { "Content-Type": "application/cose" }, body: envelope,
  });
  const body = await response.json().catch(() => null);
  return { response, body, envelope };
}

async function vote(proposalId, approve, out) {
  out.textContent = "Signing and submitting the ballot…";
  const payload = JSON.stringify({ ballot: approve ? "approve" : "reject" }).replace(":", ": ");
  const path = `/gov/members/proposals/${proposalId}/ballots/${state.member.id}:submit`;
  const { response, body, envelope } = await signedPost(path, "ballot", payload, proposalId);
  const status = $("gov-status");
  status.dataset.lastBallot = bytesToHex(envelope);
  if (response.ok) {
    status.textContent = `Ballot on ${shortId(proposalId)} recorded: the proposal is now ${body.proposalState}.`;
    await refreshGovernance();
  } else {
    out.textContent = `Refused: ${body && body.error ? `${body.error.code}: ${body.error.message}` : response.status}`;
  }
}

async function dryRun(actionsText, out) {
  out.replaceChildren("Asking for a dry run…");
  const { response, body } = await signedPost("/gov/members/proposals:dry-run", "proposal", actionsText);
  out.replaceChildren(el("p", {}, response.ok ? "Dry run (nothing was recorded):" : "Dry run refused:"),
    el("pre", {}, JSON.stringify(body, null, 2)));
}

async function refreshGovernance() {
  let proposals, members, users;
  try {
    [proposals, members, users] = await Promise.all([
      getJson(`/gov/members/proposals?${GOV_API}`), getJson(`/gov/service/members?${GOV_API}`), getJson(`/gov/service/users?${GOV_API}`),
    ]);
  } catch (error) {
    $("proposals").replaceChildren(el("p", { class: "error" }, error.message));
    return;
  }
  const activeMembers = members.value.filter((m) => m.status === "Active");
  const list = [];
  for (const p of proposals.value.slice().reverse()) {
    const actionsText = await fetch(`/gov/members/proposals/${p.proposalId}/actions?${GOV_API}`).then((r) => r.text());
    let actions = [];
    try { actions = JSON.parse(actionsText).actions || []; } catch { /* shown raw below */ }
    const ballots = [];
    if (p.finalVotes) {
      for (const [member, approve] of Object.entries(p.finalVotes)) ballots.push(el("li", {}, `${shortId(member)}: ${approve ? "approve" : "reject"}`));
    } else {
      for (const m of activeMembers) {
        const ballot = await fetch(`/gov/members/proposals/${p.proposalId}/ballots/${m.memberId}?${GOV_API}`);
        ballots.push(el("li", {}, `${shortId(m.memberId)}: ${ballot.ok ? "voted" : "has not voted"}`));
      }
    }
    const out = el("p", { class: "vote-result", "aria-live": "polite" });
    const controls = [];
    if (p.proposalState === "Open" && state.member) {
      controls.push(
        el("button", { type: "button", class: "vote-approve", onclick: () => vote(p.proposalId, true, out) }, "Approve"),
        el("button", { type: "button", class: "secondary vote-reject", onclick: () => vote(p.proposalId, false, out) }, "Reject"),
        el("button", { type: "button", class: "secondary", onclick: () => dryRun(actionsText, out) }, "Dry run"));
    } else if (p.proposalState === "Open") {
      controls.push(el("span", { class: "muted" }, "Load a member key above to vote or ask for a dry run."));
    }
    list.push(el("article", { class: "proposal", "data-proposal-id": p.proposalId, "data-state": p.proposalState },
      el("h4", {}, el("span", { class: `badge ${p.proposalState === "Accepted" ? "ok" : p.proposalState === "Open" ? "gov" : "bad"}` }, p.proposalState),
        el("span", { class: "mono" }, p.proposalId)),
      el("p", { class: "muted" }, `proposed by ${shortId(p.proposerId)} · ${p.ballotCount} ballot(s)`),
      el("p", {}, "Actions: ", actions.map((a) => el("code", {}, a.name)).reduce((acc, x) => (acc.length ? [...acc, ", ", x] : [x]), [])),
      el("details", {}, el("summary", {}, "Action arguments"), el("pre", {}, JSON.stringify(actions, null, 2))),
      el("ul", { "aria-label": "Ballots" }, ballots),
      el("div", { class: "row" }, controls), out));
  }
  $("proposals").replaceChildren(...(list.length ? list : [el("p", { class: "muted" }, "No proposals yet.")]));
  replaceRows($("members-table"), members.value.map((m) => el("tr", {},
    el("td", { class: "mono", title: m.memberId }, shortId(m.memberId)), el("td", {}, m.status), el("td", {}, m.recoveryRole))));
  replaceRows($("users-table"), users.value.map((u) => {
    let cn = "";
    try { cn = parsePemCertificate(u.certificate).subjectCN; } catch { cn = "(unreadable)"; }
    return el("tr", {}, el("td", { class: "mono", title: u.userId }, shortId(u.userId)), el("td", {}, cn));
  }));
}

// ------------------------------------------------------------------ ledger explorer
function valueText(v) {
  if (v === null) return el("em", {}, "removed");
  const shown = v.text !== undefined && /^[\x20-\x7e\s]*$/.test(v.text) ? v.text : `0x${v.hex}`;
  return `${shown}${v.size > v.hex.length / 2 ? ` … (${v.size} bytes)` : ""}`;
}

function renderEntry(entry) {
  const badges = [];
  if (entry.is_signature) badges.push(el("span", { class: "badge sig" }, "signature"));
  if (entry.is_governance) badges.push(el("span", { class: "badge gov" }, "governance"));
  if (entry.private.encrypted) badges.push(el("span", { class: "badge" }, "private"));
  const tables = Object.entries(entry.public).map(([name, writes]) => el("table", {},
    el("caption", {}, name),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Key"), el("th", { scope: "col" }, "Value"))),
    el("tbody", {}, writes.map((w) => el("tr", {}, el("td", { class: "mono" }, valueText(w.key)), el("td", { class: "mono" }, valueText(w.value)))))));
  return el("article", { class: "entry", id: `entry-${entry.seqno}`, "data-seqno": entry.seqno, "data-txid": entry.txid },
    el("h3", {}, `seqno ${entry.seqno} `, el("span", { class: "muted" }, `(transaction ${entry.txid}, ${entry.size} bytes)`), " ", badges),
    entry.private.encrypted ? el("p", { class: "muted" }, `Private domain: ${entry.private.size} bytes, encrypted (not shown).`) : null,
    entry.leaf_checked ? null : el("p", { class: "muted" }, "Older than this node's Merkle tree in memory: not checked against it."),
    tables);
}

async function loadEntries(from = null, highlight = null) {
  const first = from || Number($("ledger-from").value) || 1;
  const count = Math.min(100, Math.max(1, Number($("ledger-count").value) || 20));
  $("ledger-status").textContent = "Loading…";
  let doc;
  try {
    doc = await getJson(`/node/ledger/entries?from_seqno=${first}&count=${count}`);
  } catch (error) {
    $("ledger-entries").replaceChildren();
    $("ledger-status").replaceChildren(el("span", { class: "error" }, error.message),
      error.status === 401 || error.status === 403
        ? " — the explorer needs a user or member certificate in this browser (see docs/console.md)." : "");
    return;
  }
  const govOnly = $("ledger-gov-only").checked;
  const entries = doc.entries.filter((e) => !govOnly || e.is_governance);
  $("ledger-status").textContent = `Committed up to seqno ${doc.commit_seqno}. Showing ${entries.length} of seqnos ${first}–${first + doc.entries.length - 1}.`;
  $("ledger-entries").replaceChildren(...entries.map(renderEntry));
  if (highlight) {
    const target = $(`entry-${highlight}`);
    if (target) { target.scrollIntoView(); target.tabIndex = -1; target.focus(); }
  }
}

async function jumpTo(txid) {
  const m = /^(\d+)\.(\d+)$/.exec(txid.trim());
  if (!m) {
    $("ledger-status").textContent = "A transaction id looks like 2.15 (view.seqno).";
    return;
  }
  const seqno = Number(m[2]);
  $("ledger-from").value = String(seqno);
  await loadEntries(seqno, seqno);
  const entry = $(`entry-${seqno}`);
  if (entry && entry.dataset.txid !== txid.trim()) {
    $("ledger-status").textContent = `Seqno ${seqno} was committed as ${entry.dataset.txid}, not ${txid}: ${txid} was rolled back or never existed.`;
  }
}

// ------------------------------------------------------------------ receipt verifier
function explain(result) {
  const proves = [
    `The service whose certificate you gave committed a transaction${result.txid ? ` with id ${result.txid}` : ""}, whose write set has the digest ${result.writeSetDigest}.`,
    `Its leaf ${result.leaf} is in the Merkle tree whose root ${result.root} was signed by ${result.signer}${result.kind === "JSON" ? ", a node the service certificate endorses" : ""}.`,
    result.claimsDigest && /[^0]/.test(result.claimsDigest) ? `The application bound the claims digest ${result.claimsDigest} to it.` : "No application claims were bound to it (claims digest is zero).",
  ];
  const doesNot = [
    "What the transaction wrote: the receipt carries a digest of the write set, not the values (private values stay encrypted in the ledger).",
    "That the service certificate is the right one: get it from a source you trust, not from the party that handed you the receipt.",
    "That the written values are still current: later transactions may have changed them.",
  ];
  return [el("h4", {}, "What it proves"), el("ul", {}, proves.map((t) => el("li", {}, t))),
    el("h4", {}, "What it does not prove"), el("ul", {}, doesNot.map((t) => el("li", {}, t)))];
}

async function verifyNow() {
  const out = $("receipt-result");
  out.replaceChildren("Verifying…");
  try {
    const input = state.receiptBytes || $("receipt-text").value;
    const result = await verifyReceipt(input, $("service-cert-text").value);
    out.replaceChildren(el("div", { class: "verdict valid", "data-verdict": "valid", role: "status" },
      el("h3", {}, `Valid ${result.kind} receipt${result.txid ? ` for transaction ${result.txid}` : ""}`), explain(result)));
  } catch (error) {
    out.replaceChildren(el("div", { class: "verdict invalid", "data-verdict": "invalid", role: "alert" },
      el("h3", {}, "Invalid receipt"),
      el("p", {}, `Failed check: ${error.check || "format"}. ${error.message}`),
      el("p", {}, "It proves nothing: do not rely on it.")));
  }
}

async function takeReceiptFile(file) {
  if (file.size > 1024 * 1024) throw new Error("receipt file is larger than 1 MiB");
  const bytes = new Uint8Array(await file.arrayBuffer());
  const text = new TextDecoder().decode(bytes);
  if (text.trim().startsWith("{")) {
    state.receiptBytes = null;
    $("receipt-text").value = text;
  } else {
    state.receiptBytes = bytes;
    $("receipt-text").value = `(binary COSE receipt from ${file.name}, ${bytes.length} bytes)`;
  }
}

function setUpReceipt() {
  $("verify-button").addEventListener("click", verifyNow);
  $("receipt-text").addEventListener("input", () => { state.receiptBytes = null; });
  $("receipt-file").addEventListener("change", async () => {
    const file = $("receipt-file").files[0];
    if (file) await takeReceiptFile(file);
  });
  const drop = $("receipt-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) await takeReceiptFile(e.dataTransfer.files[0]);
  });
}

// ------------------------------------------------------------------ start
async function start() {
  setUpTabs();
  setUpReceipt();
  $("member-cert").addEventListener("change", loadMember);
  $("member-key").addEventListener("change", loadMember);
  $("ledger-form").addEventListener("submit", (e) => { e.preventDefault(); loadEntries(); });
  $("jump-form").addEventListener("submit", (e) => { e.preventDefault(); jumpTo($("jump-txid").value); });
  await refreshService();
  if (!$("service-cert-text").value) {
    $("service-cert-text").value = state.serviceCertPem;
    $("service-cert-note").textContent = "Filled in with the certificate this node reports. To check a receipt independently of this node, paste a copy you got from elsewhere.";
  }
  showView(location.hash.slice(1) || "service");
  state.timer = setInterval(refreshService, SAMPLE_MS);
  document.body.dataset.ready = "true";
}

start();
