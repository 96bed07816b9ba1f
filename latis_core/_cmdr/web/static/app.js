// latis dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.
// Live through two server-sent event streams: the controller's events
// (/api/v1/events) and the followed prompt's chunks (/api/v1/prompts/ID/events).
// Everything an agent or a unit says is put in the page as text (textContent),
// never as HTML.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
const view = {
  csrf: null,
  units: new Map(),      // name -> status entry
  sessions: new Map(),   // id -> {id, unit, state, context, since}
  rows: new Map(),       // session id -> <tr>
  followed: null,        // the session shown in the follow pane
  prompt: null,          // the prompt followed there: {id, reply, source}
  refreshing: false,
  queued: [],
  snapshot: 0,
};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
}

async function request(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-Latis-CSRF"] = view.csrf;
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(API + path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((data.error && data.error.message) || response.statusText);
  }
  return data;
}
const call = (method, params) => request("POST", "/call/" + method, params);

function debounce(fn, ms) {
  let timer = null;
  return () => {
    if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

function ago(when) {
  if (!when) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - when));
  return s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m" : Math.floor(s / 3600) + "h";
}

// ---- units and sessions -------------------------------------------------------------

function renderUnits() {
  const body = $("units").tBodies[0];
  const select = $("new-unit");
  const chosen = select.value;
  body.replaceChildren();
  select.replaceChildren();
  for (const unit of view.units.values()) {
    const row = el("tr");
    row.dataset.unit = unit.unit;
    row.append(el("td", unit.unit), el("td", unit.provisioner || "-"),
      el("td", unit.connection + (unit.error ? ": " + unit.error : ""), "c-" + unit.connection),
      el("td", countSessions(unit.unit)),
      el("td", unit.agent ? unit.agent.name + " " + unit.agent.version : ""));
    body.append(row);
    select.append(el("option", unit.unit));
  }
  if (chosen) select.value = chosen;
}

function countSessions(unit) {
  let n = 0;
  for (const s of view.sessions.values()) if (s.unit === unit) n++;
  return n;
}

function sessionRow(session) {
  let row = view.rows.get(session.id);
  if (!row) {
    row = el("tr");
    row.dataset.session = session.id;
    row.tabIndex = 0;
    row.append(el("td", session.id), el("td"), el("td"), el("td"), el("td"));
    row.addEventListener("click", () => follow(session.id));
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") follow(session.id); });
    view.rows.set(session.id, row);
    $("sessions").tBodies[0].append(row);
  }
  const cells = row.cells;
  cells[1].textContent = session.unit || "";
  cells[2].textContent = session.state + (session.question ? ": " + session.question : "");
  cells[2].title = cells[2].textContent;
  cells[2].className = "state-" + session.state;
  const ctx = session.context;
  cells[3].textContent = ctx && ctx.used && ctx.size
    ? Math.round((100 * ctx.used) / ctx.size) + "%" : "";
  cells[4].textContent = ago(session.since);
  cells[4].dataset.since = session.since || "";
  row.hidden = !matches(session);
  row.classList.toggle("selected", session.id === view.followed);
  return row;
}

function matches(session) {
  const words = $("filter").value.trim().toLowerCase();
  if (!words) return true;
  const text = (session.id + " " + session.unit + " " + session.state).toLowerCase();
  return words.split(/\s+/).every((w) => text.includes(w));
}

function renderSummary() {
  const counts = {};
  for (const s of view.sessions.values()) counts[s.state] = (counts[s.state] || 0) + 1;
  const parts = Object.entries(counts).map(([k, v]) => v + " " + k);
  $("summary").textContent = view.units.size + " units · " + view.sessions.size +
    " sessions" + (parts.length ? ": " + parts.join(", ") : "");
}
const summaryLater = debounce(() => { renderSummary(); renderUnits(); }, 200);

function applySession(event) {
  const known = view.sessions.get(event.session);
  if (event.state === "closed") {
    view.sessions.delete(event.session);
    const row = view.rows.get(event.session);
    if (row) row.remove();
    view.rows.delete(event.session);
  } else {
    const session = known || { id: event.session, unit: event.unit };
    const was = session.state;
    session.state = event.state;
    session.unit = session.unit || event.unit;
    session.since = event.at;
    if (event.state !== "waiting") delete session.question;
    view.sessions.set(session.id, session);
    sessionRow(session);
    if (was === "waiting" || event.state === "waiting") inboxLater();
  }
  if (event.state === "idle" || event.state === "closed") usageLater();
  summaryLater();
  if (event.session === view.followed) followedChanged(event.state);
}

function applyUnit(event) {
  const unit = view.units.get(event.unit) || { unit: event.unit };
  unit.connection = event.connection;
  unit.error = event.error;
  view.units.set(event.unit, unit);
  summaryLater();
}

async function refresh() {
  view.refreshing = true;
  try {
    const status = await request("GET", "/call/status");
    view.snapshot = status.seq;
    view.units.clear();
    view.sessions.clear();
    for (const unit of status.units) {
      view.units.set(unit.unit, unit);
      for (const s of unit.sessions) {
        view.sessions.set(s.id, { id: s.id, unit: unit.unit, state: s.state,
          context: s.context, since: s.question ? s.question.since : null,
          question: s.question ? s.question.question : null });
      }
    }
    for (const [id, row] of view.rows) {
      if (!view.sessions.has(id)) { row.remove(); view.rows.delete(id); }
    }
    for (const session of view.sessions.values()) sessionRow(session);
    renderUnits();
    renderSummary();
    for (const event of view.queued) {
      if (event.seq > view.snapshot) apply(event);
    }
  } catch (error) {
    showError(error);
  } finally {
    view.refreshing = false;
    view.queued = [];
  }
  refreshInbox();
  refreshUsage();
}

function apply(event) {
  if (event.kind === "unit") applyUnit(event);
  else applySession(event);
}

function onEvent(kind) {
  return (message) => {
    const event = JSON.parse(message.data);
    event.kind = kind;
    if (view.refreshing) view.queued.push(event);
    else if (event.seq > view.snapshot) apply(event);
  };
}

function openEvents() {
  const source = new EventSource(API + "/events");
  source.addEventListener("ready", () => {
    $("live").textContent = "live";
    $("live").className = "live on";
    refresh();
  });
  source.addEventListener("session", onEvent("session"));
  source.addEventListener("unit", onEvent("unit"));
  source.addEventListener("resync", () => refresh());
  source.onerror = () => {
    $("live").textContent = "reconnecting";
    $("live").className = "live off";
  };
}

// ---- inbox --------------------------------------------------------------------------

async function answer(id, text) {
  try {
    await call("inbox.answer", { id, answer: text, by: "web" });
    document.querySelectorAll(".ask").forEach((node) => {
      if (node.dataset.id === id) node.remove();
    });
    showError(null);
  } catch (error) {
    showError(error);
  }
  refreshInbox();
}

function answerForm(id, options) {
  const form = el("form");
  form.className = "answer";
  for (const option of options || []) {
    const button = el("button", option);
    button.type = "button";
    button.dataset.answer = option;
    button.addEventListener("click", () => answer(id, option));
    form.append(button);
  }
  const input = el("input");
  input.placeholder = options && options.length ? "or an answer" : "your answer";
  input.setAttribute("aria-label", "answer to " + id);
  form.append(input, el("button", "answer"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (input.value.trim()) answer(id, input.value);
  });
  return form;
}

async function refreshInbox() {
  let items;
  try {
    items = (await request("GET", "/call/inbox.list")).items;
  } catch (error) {
    showError(error);
    return;
  }
  const list = $("inbox");
  list.replaceChildren();
  for (const item of items) {
    const li = el("li");
    li.dataset.id = item.id;
    li.append(el("div", item.unit + " · " + item.session + " · " + item.agent + " · " +
      ago(item.since) + " ago", "meta"), el("div", item.question, "question"),
      answerForm(item.id, item.options));
    list.append(li);
  }
  $("inbox-count").textContent = items.length;
  $("inbox-count").classList.toggle("zero", items.length === 0);
}
const inboxLater = debounce(refreshInbox, 100);

// ---- usage --------------------------------------------------------------------------

async function refreshUsage() {
  let data;
  try {
    data = await request("GET", "/call/usage?by=" + encodeURIComponent($("usage-by").value));
  } catch (error) {
    showError(error);
    return;
  }
  const body = $("usage").tBodies[0];
  body.replaceChildren();
  const rows = data.rows.slice().sort((a, b) => (b.cost || 0) - (a.cost || 0)).slice(0, 50);
  for (const row of rows) {
    const tr = el("tr");
    const cost = row.cost === null || row.cost === undefined ? "-"
      : row.cost.toFixed(4) + " " + (row.currency || "");
    tr.append(el("td", row.key), el("td", row.prompts), el("td", row.input_tokens ?? "-"),
      el("td", row.output_tokens ?? "-"), el("td", cost));
    body.append(tr);
  }
}
const usageLater = debounce(refreshUsage, 2000);

// ---- the followed session -----------------------------------------------------------

function stopFollowing() {
  if (view.prompt && view.prompt.source) view.prompt.source.close();
  view.prompt = null;
  $("cancel").disabled = true;
}

function promptBlock(text) {
  const box = el("div");
  box.append(el("div", text, "prompt"));
  const reply = el("div", null, "reply");
  box.append(reply);
  $("transcript").append(box);
  return { box, reply };
}

function showChunk(target, chunk) {
  if (chunk.kind) target.reply.append(el("span", "[" + chunk.kind + "] " + chunk.text,
    "chunk-kind"));
  else target.reply.append(chunk.text);
}

function scrollDown() {
  const pane = $("transcript");
  pane.scrollTop = pane.scrollHeight;
}

function followPrompt(id, block, after) {
  stopFollowing();
  const source = new EventSource(API + "/prompts/" + id + "/events?after=" + after);
  view.prompt = { id, block, source };
  $("cancel").disabled = false;
  source.addEventListener("chunk", (message) => {
    showChunk(block, JSON.parse(message.data));
    scrollDown();
  });
  source.addEventListener("input", (message) => {
    const ask = JSON.parse(message.data);
    const box = el("div", null, "ask");
    box.dataset.id = ask.id;
    box.append(el("div", ask.question, "question"), answerForm(ask.id, ask.options));
    block.reply.after(box);
    scrollDown();
  });
  source.addEventListener("end", (message) => {
    const end = JSON.parse(message.data);
    source.close();
    block.box.querySelectorAll(".ask").forEach((node) => node.remove());
    block.box.append(el("div", end.outcome + (end.message ? ": " + end.message : ""),
      "outcome outcome-" + end.outcome));
    if (view.prompt && view.prompt.id === id) {
      view.prompt = null;
      $("cancel").disabled = true;
    }
    scrollDown();
  });
}

async function follow(sid) {
  stopFollowing();
  view.followed = sid;
  for (const [id, row] of view.rows) row.classList.toggle("selected", id === sid);
  $("follow-id").textContent = sid;
  $("transcript").replaceChildren();
  for (const id of ["prompt-text", "send", "close"]) $(id).disabled = false;
  let data;
  try {
    data = await request("GET", "/sessions/" + encodeURIComponent(sid) + "/transcript");
  } catch (error) {
    showError(error);
    return;
  }
  if (view.followed !== sid) return;
  $("follow-state").textContent = data.unit + " · " + data.state;
  if (data.more) $("transcript").append(el("div", data.more + " earlier prompts", "meta"));
  let last = null;
  for (const prompt of data.prompts) {
    const block = promptBlock(prompt.text);
    let seq = -1;
    for (const chunk of prompt.chunks) { showChunk(block, chunk); seq = chunk.seq; }
    if (prompt.state !== "running") {
      block.box.append(el("div", prompt.state + (prompt.error ? ": " + prompt.error : ""),
        "outcome outcome-" + prompt.state));
    }
    last = { prompt, block, seq };
  }
  scrollDown();
  if (last && last.prompt.state === "running") followPrompt(last.prompt.id, last.block, last.seq);
}

async function followedChanged(state) {
  $("follow-state").textContent = (view.sessions.get(view.followed) || {}).unit + " · " + state;
  if (state === "closed") {
    stopFollowing();
    for (const id of ["prompt-text", "send", "close"]) $(id).disabled = true;
    return;
  }
  if ((state === "busy" || state === "waiting") && !view.prompt) {
    // A prompt started elsewhere (the CLI, another page): follow it from its start.
    const sid = view.followed;
    const info = await call("session.get", { session: sid }).catch(() => null);
    if (!info || !info.last_prompt || view.followed !== sid || view.prompt) return;
    if (info.last_prompt.state === "running") follow(sid);
  }
}

async function sendPrompt(event) {
  event.preventDefault();
  const text = $("prompt-text").value;
  if (!text.trim() || !view.followed) return;
  try {
    const sid = view.followed;
    const block = promptBlock(text);
    stopFollowing();
    const sent = await request("POST", "/sessions/" + encodeURIComponent(sid) + "/prompts",
      { text });
    $("prompt-text").value = "";
    followPrompt(sent.prompt, block, -1);
    showError(null);
  } catch (error) {
    showError(error);
  }
}

async function newSession(event) {
  event.preventDefault();
  try {
    const data = await request("POST", "/sessions", { unit: $("new-unit").value });
    applySession({ session: data.session, unit: data.unit, state: data.state,
      at: Date.now() / 1000, seq: 0 });
    follow(data.session);
    $("prompt-text").focus();
  } catch (error) {
    showError(error);
  }
}

function visibleRows() {
  return [...view.rows.values()].filter((row) => !row.hidden);
}

function onKey(event) {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    if (event.key === "Enter" && event.ctrlKey && event.target.id === "prompt-text") {
      sendPrompt(event);
    }
    return;
  }
  if (event.key === "/") { event.preventDefault(); $("filter").focus(); }
  else if (event.key === "n" && view.followed) { event.preventDefault(); $("prompt-text").focus(); }
  else if (event.key === "c" && view.prompt) $("cancel").click();
  else if (event.key === "a") {
    const input = document.querySelector(".ask input, #inbox input");
    if (input) { event.preventDefault(); input.focus(); }
  } else if (event.key === "j" || event.key === "k") {
    const rows = visibleRows();
    const at = rows.indexOf(document.activeElement);
    const next = rows[Math.min(rows.length - 1, Math.max(0, at + (event.key === "j" ? 1 : -1)))];
    if (next) next.focus();
  }
}

async function start() {
  try {
    const hello = await request("GET", "/hello");
    view.csrf = hello.csrf;
    $("version").textContent = "cmdr " + hello.version + " · pid " + hello.pid;
  } catch (error) {
    showError(error);
    return;
  }
  $("prompt-form").addEventListener("submit", sendPrompt);
  $("new-session").addEventListener("submit", newSession);
  $("filter").addEventListener("input", () => {
    for (const session of view.sessions.values()) sessionRow(session);
  });
  $("usage-by").addEventListener("change", refreshUsage);
  $("cancel").addEventListener("click", async () => {
    if (!view.prompt) return;
    try {
      await request("POST", "/prompts/" + view.prompt.id + "/cancel");
    } catch (error) {
      showError(error);
    }
  });
  $("close").addEventListener("click", async () => {
    if (!view.followed) return;
    try {
      await request("POST", "/sessions/" + encodeURIComponent(view.followed) + "/close");
    } catch (error) {
      showError(error);
    }
  });
  document.addEventListener("keydown", onKey);
  setInterval(() => {  // the "since" column ages; nothing is fetched
    for (const row of visibleRows()) {
      const cell = row.cells[4];
      if (cell.dataset.since) cell.textContent = ago(Number(cell.dataset.since));
    }
  }, 5000);
  openEvents();
}

document.addEventListener("DOMContentLoaded", start);
