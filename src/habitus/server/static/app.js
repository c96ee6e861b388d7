// The Habitus dashboard: a thin reader of the HTTP API (/v1), hand-written, no build step.
// Every request carries the token as "Authorization: Bearer"; the live stream is read with
// fetch() (EventSource cannot send headers), so the token never goes into a URL or a log.
"use strict";

const TOKEN_KEY = "habitus.token";
const PAGE = 50;
const MAX_DEPTHS = 100; // agents whose mailbox depth is read for the list
const SVG_NS = "http://www.w3.org/2000/svg";
const HIDDEN = "hidden"; // the actor of an event this principal may not see, in a causal walk

const state = {
  token: null,
  principal: null,
  events: new Map(), // id -> Event, every event seen (timeline, stream, graphs, chats)
  timeline: new Set(), // ids shown in the timeline
  timelineCursor: null,
  filter: {},
  lastSeq: 0,
  agents: [],
  agentSelected: null,
  threadSelected: null,
  memoryAgent: null,
  selectedEvent: null,
  direction: "causes",
  graph: null,
  live: null,
};

// -- small helpers --------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes (never HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  return put(el, ...children);
}

/** Replace an element's children: nested lists are flattened, null and false skipped, strings become text. */
function put(el, ...children) {
  el.replaceChildren();
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c) el.append(c);
  return el;
}

function principalKind(p) {
  if (!p) return "hidden";
  const k = String(p).split(":")[0];
  return ["human", "agent", "source", "service", "system"].includes(k) ? k : "system";
}

function principalChip(p) {
  return h("span", { class: `principal p-${principalKind(p)}`, title: p }, p || "hidden");
}

function shortId(id) {
  return id ? String(id).slice(-8) : "";
}

function clip(s, n) {
  s = String(s);
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleTimeString();
}

function fmtAgo(ts) {
  const d = new Date(ts);
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (Number.isNaN(s)) return "";
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return d.toLocaleDateString();
}

function contentText(ev) {
  if (!ev || ev.content === null || ev.content === undefined) return ev && ev.erased ? "(erased)" : "";
  if (ev.content_type === "bytes") return `(${Math.floor((String(ev.content).length * 3) / 4)} bytes)`;
  if (typeof ev.content === "string") return ev.content;
  return JSON.stringify(ev.content);
}

/** One line that says what an event is about, by kind. */
function summary(ev) {
  const m = ev.meta || {};
  const body = clip(contentText(ev), 140);
  switch (ev.kind) {
    case "message.sent":
      return `→ ${m.to}${m.type ? ` [${m.type}]` : ""}: ${body}`;
    case "message.published":
      return `→ topic ${m.topic} (${m.recipients} recipients): ${body}`;
    case "message.failed":
    case "message.dead_lettered":
      return `${m.agent}: ${m.error}`;
    case "memory.remembered":
      return `${m.agent} remembers: ${body}`;
    case "memory.recalled":
      return `${m.agent} recalls “${body}” → ${(m.returned || []).length} hits`;
    case "memory.forgotten":
      return `${m.agent} forgets ${shortId(m.memory)} (${m.cause || m.reason || ""})`;
    case "fact.asserted":
      return ev.content && typeof ev.content === "object"
        ? `${m.agent}: ${ev.content.subject} ${ev.content.predicate} ${JSON.stringify(ev.content.value)}`
        : `${m.agent} asserts a fact`;
    case "policy.denied":
      return `${m.principal} may not ${m.action} ${m.resource}: ${m.reason}`;
    case "capability.granted":
      return `${m.subject} may ${m.action} ${m.resource}`;
    case "approval.requested":
      return `${m.principal} asks to ${m.action} ${m.resource}`;
    case "approval.decided":
      return `${m.decision}${m.reason ? `: ${m.reason}` : ""}`;
    case "token.created":
      return `token for ${m.principal}`;
    case "agent.state_set":
      return `${m.agent}.${m.key} = ${body}`;
    case "model.called": {
      const informed = m.memories || m.facts || m.messages
        ? ` · informed by ${m.memories || 0} memories, ${m.facts || 0} facts, ${m.messages || 0} messages`
        : "";
      const tools = (m.tool_calls || []).length ? ` · asks for ${m.tool_calls.join(", ")}` : "";
      return `${m.provider}/${m.model} · ${m.prompt_tokens}+${m.completion_tokens} tokens${informed}${tools}`;
    }
    case "model.failed":
      return `${m.provider}/${m.model} failed (${m.error}): ${m.message || ""}`;
    case "tool.called":
      return `calls ${m.tool}: ${body}`;
    case "tool.returned":
      return `${m.tool} → ${body}`;
    case "tool.failed":
      return `${m.tool} failed (${m.error}${m.limit ? `: ${m.limit}` : ""}): ${body}`;
    case "decision.made":
      return `decides: ${m.action}`;
    default:
      if (ev.kind && ev.kind.startsWith("agent.")) return `${m.agent}${m.reason ? `: ${m.reason}` : ""}`;
      return body || (Object.keys(m).length ? clip(JSON.stringify(m), 140) : "");
  }
}

function notice(message) {
  const el = $("notice");
  if (!message) {
    el.hidden = true;
    return;
  }
  el.textContent = message;
  el.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => (el.hidden = true), 8000);
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

// -- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** The bearer header, or none: a server in development mode acts as its development principal without one. */
function auth() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

/** Call the API as the token's principal; paths are relative, so a prefix in front of the server works. */
async function api(path, { method = "GET", query, body, signal } = {}) {
  const url = new URL("v1" + path, document.baseURI);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { ...auth(), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401) {
    signOut("The token was refused (unknown, revoked or expired). Paste another one.");
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Run an API call, showing its error (if any) instead of throwing. */
async function attempt(fn, what) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return undefined;
    if (err && err.name === "AbortError") return undefined;
    notice(`${what}: ${err.message}`);
    return undefined;
  }
}

function remember(ev) {
  if (ev && ev.id && ev.kind && ev.actor !== HIDDEN) state.events.set(ev.id, ev);
  return ev;
}

// -- token ----------------------------------------------------------------------------------

function takeToken() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function signOut(message) {
  document.body.classList.remove("signed-in");
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.live) state.live.stop();
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("whoami").textContent = "";
  $("login").hidden = false;
  if (message) notice(message);
  $("token-input").focus();
}

async function start() {
  state.token = takeToken();
  attempt(async () => {
    const health = await fetch(new URL("v1/health", document.baseURI)).then((r) => r.json());
    $("habitat-name").textContent = health.habitat;
    document.title = `Habitus: ${health.habitat}`;
  }, "health");
  let me;
  if (state.token) {
    me = await attempt(() => api("/whoami"), "whoami");
    if (!me) return;
  } else {
    // No token: only a server in development mode (habitus serve --dev-principal) answers.
    const response = await fetch(new URL("v1/whoami", document.baseURI)).catch(() => null);
    if (!response || !response.ok) {
      signOut();
      return;
    }
    me = await response.json();
  }
  state.principal = me.principal;
  const who = $("whoami");
  who.textContent = me.principal;
  who.className = `badge principal p-${principalKind(me.principal)}`;
  document.body.classList.add("signed-in");
  $("login").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  await Promise.all([loadTimeline(), loadAgents(), loadThreads(), loadLedger(), loadApprovals()]);
  startLive();
}

// -- tabs -----------------------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !on;
  }
  if (name === "memory") loadMemoryAgents();
  if (name === "highlights") loadHighlights();
}

// -- highlights: decisions, informed model calls, superseded beliefs, denials, audit notes ---

const HIGHLIGHTS = [
  { list: "hl-decisions", kind: "decision.made", keep: () => true },
  { list: "hl-models", kind: "model.called", keep: () => true },
  { list: "hl-facts", kind: "fact.asserted", keep: (ev) => ((ev.meta || {}).supersedes || []).length > 0, scan: 200 },
  { list: "hl-denials", kind: "policy.denied", keep: () => true },
  { list: "hl-notes", kind: "note.recorded", keep: () => true },
];
const HIGHLIGHT_KINDS = new Set(HIGHLIGHTS.map((x) => x.kind));

async function loadHighlights() {
  await Promise.all(
    HIGHLIGHTS.map(async ({ list, kind, keep, scan }) => {
      const page = await attempt(() => api("/events", { query: { kind, order: "desc", limit: scan || 5 } }), "highlights");
      if (!page) return;
      const shown = page.events.filter(keep).slice(0, 5);
      for (const ev of shown) remember(ev);
      put($(list), ...(shown.length ? shown.map((ev) => eventRow(ev, false)) : [h("li", { class: "muted" }, "None yet.")]));
    }),
  );
}

const refreshHighlights = debounce(() => !$("panel-highlights").hidden && loadHighlights(), 800);

// -- the timeline ---------------------------------------------------------------------------

function eventRow(ev, fresh) {
  const button = h(
    "button",
    {
      type: "button",
      class: `ev${state.selectedEvent === ev.id ? " selected" : ""}`,
      "data-testid": "event",
      "data-event-id": ev.id,
      "data-kind": ev.kind,
      "aria-label": `Event ${ev.seq}: ${ev.kind} by ${ev.actor}. Show its causal graph.`,
      onclick: () => inspect(ev.id),
    },
    h("span", { class: "seq" }, `#${ev.seq}`),
    h("span", { class: "time", title: ev.ts }, fmtTime(ev.ts)),
    h("span", {}, principalChip(ev.actor)),
    h("span", { class: "kind" }, ev.kind),
    h("span", { class: "summary", title: summary(ev) }, summary(ev)),
  );
  return h("li", { class: fresh ? "fresh" : null }, button);
}

function matchesFilter(ev) {
  const f = state.filter;
  if (f.actor && ev.actor !== f.actor) return false;
  if (f.thread && ev.thread !== f.thread) return false;
  if (f.kind) {
    if (f.kind.endsWith(".*")) {
      if (!ev.kind.startsWith(f.kind.slice(0, -1))) return false;
    } else if (ev.kind !== f.kind) return false;
  }
  return true;
}

/** A page of events, newest first; the server may stop reading early (fewer events, a cursor), so go on a little. */
async function eventsPage(query, cursor) {
  const events = [];
  let next = cursor;
  for (let i = 0; i < 5; i++) {
    const page = await attempt(() => api("/events", { query: { ...query, cursor: next } }), "events");
    if (!page) return events.length ? { events, next_cursor: next } : null;
    events.push(...page.events);
    next = page.next_cursor;
    if (next === null || next === undefined || events.length >= (query.limit || PAGE)) break;
  }
  return { events, next_cursor: next ?? null };
}

async function loadTimeline(more = false) {
  const page = await eventsPage({ ...state.filter, order: "desc", limit: PAGE }, more ? state.timelineCursor : null);
  if (!page) return;
  const list = $("timeline");
  if (!more) {
    put(list);
    state.timeline = new Set();
  }
  for (const ev of page.events) {
    remember(ev);
    state.timeline.add(ev.id);
    list.append(eventRow(ev, false));
    if (ev.seq > state.lastSeq) state.lastSeq = ev.seq;
  }
  if (!more && !page.events.length) list.append(h("li", { class: "muted" }, "No events match."));
  state.timelineCursor = page.next_cursor;
  $("timeline-more").hidden = page.next_cursor === null || page.next_cursor === undefined;
}

function countEvents(seq) {
  const el = $("stat-events");
  if (seq > (Number(el.dataset.n) || 0)) {
    el.dataset.n = String(seq);
    el.textContent = String(seq);
  }
}

function onLiveEvent(ev) {
  if (!ev || !ev.id || !ev.kind || state.timeline.has(ev.id)) return;
  if (HIGHLIGHT_KINDS.has(ev.kind)) refreshHighlights();
  remember(ev);
  if (ev.seq > state.lastSeq) state.lastSeq = ev.seq;
  countEvents(ev.seq);
  if (matchesFilter(ev)) {
    const list = $("timeline");
    const empty = list.querySelector("li.muted");
    if (empty) empty.remove();
    state.timeline.add(ev.id);
    list.prepend(eventRow(ev, true));
  }
  if (ev.kind.startsWith("agent.") || ev.kind.startsWith("message.")) refreshAgents();
  if (ev.kind.startsWith("message.")) refreshThreads();
  if (ev.kind.startsWith("approval.")) refreshApprovals();
  if (state.threadSelected && threadKey(ev) === state.threadSelected) refreshChat();
  if ((ev.kind === "memory.remembered" || ev.kind === "memory.forgotten") && ev.meta && ev.meta.agent === state.memoryAgent) {
    refreshMemories();
  }
}

// -- live: the SSE stream, read with fetch() so that it carries the bearer header ------------

class Live {
  constructor() {
    this.controller = null;
    this.stopped = false;
    this.timer = null;
  }

  badge(text, live) {
    const el = $("live-badge");
    el.textContent = text;
    el.className = live ? "badge live" : "badge";
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    clearTimeout(this.timer);
    this.badge("offline", false);
  }

  async run() {
    let failures = 0;
    while (!this.stopped) {
      const outcome = await this.stream();
      if (this.stopped) return;
      failures = outcome === "ended" ? 0 : failures + 1;
      this.badge("reconnecting…", false);
      await new Promise((r) => (this.timer = setTimeout(r, Math.min(1000 * 2 ** failures, 15000))));
    }
  }

  /** Read /v1/stream until it ends ("ended") or breaks ("failed"). */
  async stream() {
    this.controller = new AbortController();
    let response;
    try {
      response = await fetch(new URL("v1/stream", document.baseURI), {
        headers: {
          ...auth(),
          Accept: "text/event-stream",
          "Last-Event-ID": String(state.lastSeq),
        },
        signal: this.controller.signal,
        cache: "no-store",
      });
    } catch (_) {
      return "failed";
    }
    if (response.status === 401) {
      signOut("The token was refused (unknown, revoked or expired). Paste another one.");
      this.stopped = true;
      return "failed";
    }
    if (!response.ok || !response.body) return "failed";
    this.badge("live", true);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let frame = { data: [], event: null, id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "ended";
        buffer += value;
        let nl;
        while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
          if (nl === buffer.length - 1 && buffer[nl] === "\r") break; // maybe half of a CRLF: wait for the rest
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
          if (line === "") {
            if (frame.data.length) this.dispatch(frame);
            frame = { data: [], event: null, id: null };
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let val = colon < 0 ? "" : line.slice(colon + 1);
            if (val.startsWith(" ")) val = val.slice(1);
            if (field === "data") frame.data.push(val);
            else if (field === "event") frame.event = val;
            else if (field === "id") frame.id = val;
          }
        }
      }
    } catch (_) {
      return this.stopped ? "ended" : "failed";
    }
  }

  dispatch(frame) {
    let ev;
    try {
      ev = JSON.parse(frame.data.join("\n"));
    } catch (_) {
      return;
    }
    if (ev && ev.id && ev.kind) onLiveEvent(ev);
  }
}

function startLive() {
  if (state.live) state.live.stop();
  state.live = new Live();
  state.live.run();
}

// -- agents ---------------------------------------------------------------------------------

function agentId(a) {
  return a.id;
}

async function loadAgents() {
  const data = await attempt(() => api("/agents", { query: { limit: 1000 } }), "agents");
  if (!data) return;
  const agents = data;
  state.agents = agents;
  $("stat-agents").textContent = String(agents.length);
  const body = $("agents");
  put(body);
  if (!agents.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No agents you may see.")));
  for (const a of agents) {
    body.append(
      h(
        "tr",
        { class: state.agentSelected === agentId(a) ? "selected" : null, "data-testid": "agent-row", "data-agent": agentId(a) },
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => showAgent(agentId(a)) }, a.name && a.name !== a.id ? `${a.name} (${a.id})` : a.id)),
        h("td", {}, h("span", { class: `status status-${a.status}` }, a.status)),
        h("td", { "data-testid": "agent-mailbox", "data-agent": agentId(a) }, "…"),
        h("td", {}, principalChip(a.owner)),
        h("td", { class: "muted" }, a.behaviour || ""),
      ),
    );
  }
  fillMemoryAgents();
  loadDepths(agents.slice(0, MAX_DEPTHS));
}

/** Mailbox depths: the agent listing has none, so read each mailbox (a page of up to 100). */
async function loadDepths(agents) {
  await Promise.all(
    agents.map(async (a) => {
      const entries = await api(`/agents/${encodeURIComponent(agentId(a))}/mailbox`, { query: { limit: 100 } }).catch(() => null);
      const cell = document.querySelector(`[data-testid="agent-mailbox"][data-agent="${CSS.escape(agentId(a))}"]`);
      if (!cell) return;
      cell.textContent = entries === null ? "–" : entries.length >= 100 ? "100+" : String(entries.length);
      cell.title = entries === null ? "Not yours to read" : "Messages waiting for delivery";
    }),
  );
}
const refreshAgents = debounce(() => {
  loadAgents();
  if (state.agentSelected) showAgent(state.agentSelected, true);
}, 500);

/** A mailbox entry (a message, its delivery attempts and last error). */
function messageItem(entry) {
  const m = entry.message || entry;
  return h(
    "li",
    { class: "msg", "data-testid": "mailbox-entry" },
    h("div", {}, principalChip(m.sender), " ", m.type ? h("span", { class: "chip" }, m.type) : null, " ",
      h("span", { class: "muted", title: m.ts }, fmtTime(m.ts)), " ",
      entry.attempts ? h("span", { class: "chip" }, `${entry.attempts} attempt(s)`) : null,
      entry.retry_at ? h("span", { class: "chip" }, `retry ${fmtTime(entry.retry_at)}`) : null,
      m.trust === "untrusted" ? h("span", { class: "chip untrusted" }, "untrusted") : null,
      entry.error ? h("span", { class: "chip untrusted" }, clip(entry.error, 120)) : null,
      " ", h("button", { type: "button", class: "ref", onclick: () => inspect(String(m.id)), title: "Show its causal graph" }, shortId(m.id))),
    h("div", { class: "body" }, clip(typeof m.body === "string" ? m.body : JSON.stringify(m.body), 400)),
  );
}

async function showAgent(id, quiet = false) {
  state.agentSelected = id;
  for (const row of document.querySelectorAll('[data-testid="agent-row"]')) {
    row.classList.toggle("selected", row.dataset.agent === id);
  }
  const panel = $("agent-detail");
  const enc = encodeURIComponent(id);
  const [info, st, mailbox, dead] = await Promise.all([
    attempt(() => api(`/agents/${enc}`), "agent"),
    quiet ? api(`/agents/${enc}/state`).catch(() => null) : attempt(() => api(`/agents/${enc}/state`), "state"),
    attempt(() => api(`/agents/${enc}/mailbox`, { query: { limit: 100 } }), "mailbox"),
    attempt(() => api(`/agents/${enc}/dead-letters`), "dead letters"),
  ]);
  if (!info) return;
  const inbox = mailbox || [];
  const deadLetters = (dead && dead.letters) || [];
  put(panel,
    h("h3", {}, `Agent ${info.id}`),
    h(
      "dl",
      { class: "kv" },
      h("dt", {}, "status"), h("dd", {}, h("span", { class: `status status-${info.status}` }, info.status)),
      h("dt", {}, "owner"), h("dd", {}, principalChip(info.owner)),
      h("dt", {}, "behaviour"), h("dd", {}, info.behaviour || ""),
      h("dt", {}, "topics"), h("dd", {}, (info.topics || []).join(", ") || "–"),
      h("dt", {}, "labels"), h("dd", {}, Object.entries(info.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "–"),
      h("dt", {}, "events"), h("dd", {}, h("button", { type: "button", class: "link", onclick: () => filterTimeline({ actor: `agent:${info.id}` }) }, "its events in the timeline")),
    ),
    h("h3", {}, "State"),
    st === null || st === undefined ? h("p", { class: "muted" }, "Not yours to read.") : h("pre", { "data-testid": "agent-state" }, Object.keys(st).length ? JSON.stringify(st, null, 2) : "{} (nothing yet)"),
    h("h3", {}, `Mailbox (${inbox.length >= 100 ? "100+" : inbox.length})`),
    inbox.length ? h("ul", { class: "plain", "data-testid": "agent-mailbox-list" }, inbox.map(messageItem)) : h("p", { class: "muted" }, "Empty."),
    h("h3", {}, `Dead letters (${dead && dead.total !== undefined ? dead.total : deadLetters.length})`),
    deadLetters.length ? h("ul", { class: "plain", "data-testid": "agent-dead-letters" }, deadLetters.map(messageItem)) : h("p", { class: "muted" }, "None."),
  );
  panel.hidden = false;
}

async function loadApprovals() {
  const pending = await attempt(() => api("/approvals", { query: { status: "pending" } }), "approvals");
  if (!pending) return;
  $("stat-approvals").textContent = String(pending.length);
  const list = $("approvals");
  put(list);
  if (!pending.length) list.append(h("li", { class: "muted" }, "None."));
  for (const a of pending) {
    list.append(
      h("li", { class: "msg" }, principalChip(a.principal), ` asks to ${a.action} ${a.resource} `,
        a.id ? h("button", { type: "button", class: "ref", onclick: () => inspect(String(a.id)) }, shortId(a.id)) : null),
    );
  }
}
const refreshApprovals = debounce(loadApprovals, 500);

// -- conversations --------------------------------------------------------------------------

/** A conversation: the event's thread, or (messages without one) the pair of principals. */
function threadKey(ev) {
  if (ev.thread) return `thread:${ev.thread}`;
  if (ev.kind === "message.sent" && ev.meta && ev.meta.to) return `pair:${[ev.actor, ev.meta.to].sort().join(" ↔ ")}`;
  return null;
}

async function loadThreads() {
  const page = await attempt(() => api("/events", { query: { kind: "message.*", order: "desc", limit: 500 } }), "conversations");
  if (!page) return;
  const groups = new Map();
  for (const ev of page.events) {
    remember(ev);
    const key = threadKey(ev);
    if (!key) continue;
    if (!groups.has(key)) groups.set(key, { key, events: [], people: new Set(), last: ev });
    const g = groups.get(key);
    g.events.push(ev);
    g.people.add(ev.actor);
    if (ev.meta && ev.meta.to) g.people.add(ev.meta.to);
  }
  state.threads = groups;
  $("stat-threads").textContent = String(groups.size);
  const list = $("threads");
  put(list);
  if (!groups.size) list.append(h("li", { class: "muted" }, "No messages yet."));
  for (const g of groups.values()) {
    const name = g.key.startsWith("thread:") ? g.key.slice(7) : g.key.slice(5);
    list.append(
      h("li", {},
        h("button", {
          type: "button",
          "data-testid": "thread",
          "data-thread": g.key,
          "aria-current": String(state.threadSelected === g.key),
          onclick: () => openThread(g.key),
        },
        h("span", { class: "t-name" }, name),
        h("span", { class: "t-meta" }, `${g.events.length} messages · ${[...g.people].join(", ")} · ${fmtAgo(g.last.ts)}`))),
    );
  }
}
const refreshThreads = debounce(loadThreads, 700);

async function openThread(key) {
  state.threadSelected = key;
  for (const b of document.querySelectorAll('[data-testid="thread"]')) {
    b.setAttribute("aria-current", String(b.dataset.thread === key));
  }
  let events;
  if (key.startsWith("thread:")) {
    const page = await attempt(() => api("/events", { query: { thread: key.slice(7), order: "asc", limit: 500 } }), "conversation");
    if (!page) return;
    events = page.events;
  } else {
    const g = state.threads && state.threads.get(key);
    events = g ? [...g.events].reverse() : [];
  }
  const chat = $("chat");
  put(chat, h("h3", {}, key.startsWith("thread:") ? `Thread ${key.slice(7)}` : key.slice(5)));
  for (const ev of events) {
    remember(ev);
    if (ev.kind === "message.sent" || ev.kind === "message.published") {
      const kind = principalKind(ev.actor);
      const mine = ev.actor === state.principal || kind === "human";
      chat.append(
        h("button", {
          type: "button",
          class: `bubble ${mine ? "mine" : ""} ${kind}`,
          "data-testid": "chat-message",
          "data-event-id": ev.id,
          "aria-label": `${ev.actor} to ${ev.meta.to || ev.meta.topic}: ${contentText(ev)}. Show its causal graph.`,
          onclick: () => inspect(ev.id),
        },
        h("span", { class: "who" }, `${ev.actor} → ${ev.meta.to || `topic ${ev.meta.topic}`} · ${fmtTime(ev.ts)}`),
        h("span", { class: "body" }, contentText(ev))),
      );
    } else {
      chat.append(h("button", { type: "button", class: "sys", onclick: () => inspect(ev.id) }, `${ev.actor} · ${ev.kind} · ${clip(summary(ev), 80)}`));
    }
  }
  chat.scrollTop = chat.scrollHeight;
}
const refreshChat = debounce(() => state.threadSelected && openThread(state.threadSelected), 400);

// -- memory ---------------------------------------------------------------------------------

function fillMemoryAgents() {
  const select = $("memory-agent");
  const current = state.memoryAgent || select.value;
  put(select, ...state.agents.map((a) => h("option", { value: agentId(a) }, agentId(a))));
  if (current && state.agents.some((a) => agentId(a) === current)) select.value = current;
}

function loadMemoryAgents() {
  fillMemoryAgents();
  const select = $("memory-agent");
  if (select.value && select.value !== state.memoryAgent) selectMemoryAgent(select.value);
}

function selectMemoryAgent(id) {
  state.memoryAgent = id;
  put($("recall-hits"));
  put($("recall-event"));
  loadMemories();
}

function refs(ids, label) {
  return (ids || []).map((id) =>
    h("button", { type: "button", class: "ref", "data-testid": "provenance", "data-event-id": id, title: `${label}: show its causal graph`, onclick: () => inspect(String(id)) }, shortId(id)),
  );
}

function memoryItem(r) {
  return h(
    "li",
    { "data-testid": "memory", "data-memory-id": r.id },
    h("div", {}, r.text),
    h("div", { class: "chips" },
      h("span", { class: "chip" }, r.kind),
      h("span", { class: "chip" }, r.scope),
      r.trust === "untrusted" ? h("span", { class: "chip untrusted" }, "untrusted") : null,
      ...(r.tags || []).map((t) => h("span", { class: "chip" }, `#${t}`)),
      h("span", { class: "chip", title: r.recorded_at }, `recorded ${fmtAgo(r.recorded_at)}`),
      h("button", { type: "button", class: "ref", title: "The memory.remembered event", onclick: () => inspect(String(r.id)) }, `event ${shortId(r.id)}`),
      r.sources && r.sources.length ? [h("span", { class: "muted" }, "from"), ...refs(r.sources, "source")] : null),
  );
}

async function loadMemories() {
  const id = state.memoryAgent;
  if (!id) return;
  const data = await attempt(() => api(`/agents/${encodeURIComponent(id)}/memories`, { query: { limit: 200 } }), "memories");
  const list = $("memories");
  put(list);
  if (!data) {
    $("memory-count").textContent = "";
    return;
  }
  const records = data;
  $("memory-count").textContent = `(${records.length})`;
  if (!records.length) list.append(h("li", { class: "muted" }, "No memories you may see."));
  for (const r of records) list.append(memoryItem(r));
}
const refreshMemories = debounce(loadMemories, 500);

function whyChips(why) {
  return Object.entries(why || {}).map(([signal, detail]) => {
    let text = signal;
    if (detail && typeof detail === "object") {
      const parts = [];
      if (detail.rank !== undefined) parts.push(`rank ${detail.rank}`);
      if (typeof detail.score === "number") parts.push(`score ${detail.score.toFixed(3)}`);
      for (const [k, v] of Object.entries(detail)) {
        if (k !== "rank" && k !== "score" && (typeof v === "number" || typeof v === "string")) parts.push(`${k} ${typeof v === "number" ? +v.toFixed(3) : v}`);
      }
      if (parts.length) text += `: ${parts.join(", ")}`;
    } else if (detail !== null && detail !== undefined) {
      text += `: ${typeof detail === "number" ? +detail.toFixed(3) : JSON.stringify(detail)}`;
    }
    return h("span", { class: "chip", "data-testid": "why" }, text);
  });
}

async function recall(event) {
  event.preventDefault();
  const id = state.memoryAgent || $("memory-agent").value;
  if (!id) return notice("Pick an agent first.");
  const query = $("recall-query").value.trim();
  const k = Number($("recall-k").value) || 5;
  const list = $("recall-hits");
  put(list, h("li", { class: "muted" }, "Recalling…"));
  const result = await attempt(() => api(`/agents/${encodeURIComponent(id)}/recall`, { method: "POST", body: { query, k } }), "recall");
  put(list);
  if (!result) return;
  if (!result.hits.length) list.append(h("li", { class: "muted", "data-testid": "recall-empty" }, "Nothing recalled."));
  for (const hit of result.hits) {
    list.append(
      h("li", { "data-testid": "recall-hit", "data-memory-id": hit.record.id },
        h("div", {}, h("span", { class: "score", "data-testid": "recall-score", title: "Fused score (comparable within this recall)" }, hit.score.toFixed(3)), hit.record.text),
        h("div", { class: "chips" }, whyChips(hit.why)),
        h("div", { class: "chips" }, h("span", { class: "muted" }, "provenance"), ...refs(hit.provenance, "provenance"))),
    );
  }
  put($("recall-event"), result.event
    ? ["The recall is in the ledger as ", h("button", { type: "button", class: "ref", onclick: () => inspect(String(result.event)) }, shortId(result.event)), "."]
    : null);
}

// -- the ledger -----------------------------------------------------------------------------

async function loadLedger() {
  await Promise.all([loadVerify(), loadCheckpoints()]);
}

async function loadVerify() {
  const badge = $("ledger-badge");
  badge.textContent = "ledger: verifying…";
  badge.className = "badge";
  const report = await attempt(() => api("/verify"), "verify");
  const box = $("verify");
  if (!report) {
    badge.textContent = "ledger: unknown";
    put(box, h("p", { class: "muted" }, "Verification is not available to this token."));
    return;
  }
  countEvents(report.events);
  badge.textContent = report.ok ? `✓ ledger verified (${report.events} events)` : `✗ ledger: ${report.problems.length} problem(s) from #${report.problems[0].seq}`;
  badge.className = `badge ${report.ok ? "ok" : "bad"}`;
  put(box,
    h("p", { class: report.ok ? "ok-text" : "bad-text", "data-testid": "verify-status" },
      report.ok ? "✓ Every event, content digest, Merkle node and signed checkpoint checks out." : "✗ The ledger does not verify."),
    h("dl", { class: "kv" },
      h("dt", {}, "events"), h("dd", {}, String(report.events)),
      h("dt", {}, "checkpoints"), h("dd", {}, String(report.checkpoints)),
      h("dt", {}, "root"), h("dd", { class: "mono" }, report.root),
      h("dt", {}, "took"), h("dd", {}, `${(report.seconds * 1000).toFixed(1)} ms`)),
    report.problems.length
      ? h("ul", {}, report.problems.map((p) => h("li", { class: "bad-text" }, `#${p.seq} (${p.where}): ${p.reason}`)))
      : null,
  );
}

async function loadCheckpoints() {
  const data = await attempt(() => api("/checkpoints"), "checkpoints");
  if (!data) return;
  const items = data.slice().sort((a, b) => b.tree_size - a.tree_size);
  const latest = items[0];
  $("stat-checkpoint").textContent = latest ? `${latest.tree_size} events · ${fmtAgo(latest.ts)}` : "none yet";
  $("stat-checkpoint").title = latest ? `root ${latest.root}, signed ${latest.ts}` : "No checkpoint has been signed yet";
  const list = $("checkpoints");
  put(list);
  if (!items.length) list.append(h("li", { class: "muted" }, "None yet: a checkpoint is signed as the ledger grows and when it closes."));
  for (const c of items.slice(0, 20)) {
    list.append(
      h("li", { class: "msg", "data-testid": "checkpoint" },
        h("strong", {}, `first ${c.tree_size} events`), ` · signed ${fmtAgo(c.ts)} `,
        h("div", { class: "mono muted", title: c.root }, `root ${c.root}`),
        h("div", { class: "mono muted", title: c.signature }, `sig ${clip(c.signature, 40)} · key ${clip(c.public_key, 24)}`)),
    );
  }
}

// -- the causal graph -----------------------------------------------------------------------

const NODE_W = 160;
const NODE_H = 44;
const GAP_X = 44;
const GAP_Y = 16;

/** Select an event: show it and start its graph (one hop, then expand by clicking). */
async function inspect(id) {
  state.selectedEvent = id;
  for (const b of document.querySelectorAll('[data-testid="event"]')) b.classList.toggle("selected", b.dataset.eventId === id);
  state.graph = { direction: state.direction, root: id, nodes: new Map(), depth: new Map(), edges: new Map(), expanded: new Set(), selected: id };
  await expand(id, 1);
  showEvent(id);
}

function setDirection(dir) {
  $("dir-causes").setAttribute("aria-pressed", String(dir === "causes"));
  $("dir-effects").setAttribute("aria-pressed", String(dir === "effects"));
  $("trace-origin").textContent = dir === "causes" ? "Trace to origin" : "Follow every effect";
  state.direction = dir;
  if (state.graph) inspect(state.graph.root);
}

/** Fetch the why (or effects) of a node and merge it into the graph, depth offset by the node's. */
async function expand(id, depth) {
  const g = state.graph;
  if (!g) return;
  const path = g.direction === "causes" ? "why" : "effects";
  const sub = await attempt(() => api(`/events/${encodeURIComponent(id)}/${path}`, { query: { depth } }), path);
  if (!sub || state.graph !== g) return;
  const base = g.depth.has(id) ? g.depth.get(id) : 0;
  for (const node of sub.nodes) {
    remember(node);
    g.nodes.set(node.id, node);
    const d = base + (sub.depth[node.id] ?? 0);
    if (!g.depth.has(node.id) || d < g.depth.get(node.id)) g.depth.set(node.id, d);
  }
  for (const e of sub.edges) g.edges.set(`${e.cause}>${e.effect}`, e);
  // A node is expanded once its next hop is in the graph: the root of this walk, and every
  // node the walk went beyond (all of them when it was not cut short by depth).
  g.expanded.add(id);
  for (const node of sub.nodes) {
    if (node.actor === HIDDEN || (!sub.truncated && (sub.depth[node.id] ?? 0) < depth)) g.expanded.add(node.id);
  }
  drawGraph();
}

function unexplored(g, node) {
  if (g.expanded.has(node.id)) return 0;
  if (g.direction === "causes") return (node.causes || []).filter((c) => !g.nodes.has(c)).length;
  return -1; // effects are unknown until asked
}

function drawGraph() {
  const g = state.graph;
  const box = $("graph");
  if (!g || !g.nodes.size) {
    put(box, h("p", { class: "muted" }, "Nothing to show."));
    return;
  }
  const layers = new Map();
  let maxDepth = 0;
  for (const [id, d] of g.depth) {
    if (!g.nodes.has(id)) continue;
    if (!layers.has(d)) layers.set(d, []);
    layers.get(d).push(g.nodes.get(id));
    maxDepth = Math.max(maxDepth, d);
  }
  let tallest = 1;
  for (const nodes of layers.values()) {
    nodes.sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
    tallest = Math.max(tallest, nodes.length);
  }
  const height = tallest * (NODE_H + GAP_Y) + GAP_Y;
  const width = (maxDepth + 1) * (NODE_W + GAP_X) + GAP_X / 2;
  const pos = new Map();
  for (const [d, nodes] of layers) {
    // why: origins on the left, the event on the right; effects: the event on the left.
    const col = g.direction === "causes" ? maxDepth - d : d;
    const x = GAP_X / 2 + col * (NODE_W + GAP_X);
    const top = (height - nodes.length * (NODE_H + GAP_Y) + GAP_Y) / 2;
    nodes.forEach((n, i) => pos.set(n.id, { x, y: top + i * (NODE_H + GAP_Y) }));
  }
  const root = svg("svg", {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "group",
    "aria-label": `${g.direction === "causes" ? "Why" : "Effects of"} event ${g.root}: ${g.nodes.size} events`,
    "data-testid": "graph-svg",
  });
  root.append(
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))),
  );
  for (const e of g.edges.values()) {
    const a = pos.get(e.cause);
    const b = pos.get(e.effect);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    const bend = Math.max(30, Math.abs(x2 - x1) / 2);
    root.append(svg("path", {
      class: "edge",
      d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
      "marker-end": "url(#arrow)",
      "data-testid": "graph-edge",
      "data-cause": e.cause,
      "data-effect": e.effect,
    }));
  }
  for (const [id, p] of pos) {
    const node = g.nodes.get(id);
    const hidden = node.actor === HIDDEN;
    const kind = hidden ? "hidden" : principalKind(node.actor);
    const more = unexplored(g, node);
    const label = hidden ? `${node.kind}, an event you may not see` : `${node.kind} by ${node.actor}`;
    const classes = ["node", kind, id === g.root ? "root" : "", id === g.selected ? "selected" : ""].join(" ");
    const el = svg("g", {
      class: classes,
      transform: `translate(${p.x},${p.y})`,
      tabindex: 0,
      role: "button",
      "data-testid": "graph-node",
      "data-event-id": id,
      "data-kind": node.kind || "",
      "data-expanded": String(g.expanded.has(id)),
      "aria-label": `${label}${g.expanded.has(id) ? "" : ", expand"}`,
      onclick: () => clickNode(id),
      onkeydown: (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          clickNode(id);
        }
      },
    },
    svg("title", { text: hidden ? `#${node.seq} ${node.kind}: an event you may not see` : `#${node.seq} ${node.kind}\n${node.actor}\n${node.ts}\n${summary(node)}` }),
    svg("rect", { width: NODE_W, height: NODE_H, rx: 7 }),
    svg("text", { class: "k", x: 8, y: 17, text: clip(node.kind, 23) }),
    svg("text", { x: 8, y: 33, text: clip(`${hidden ? "not yours to see" : node.actor} · #${node.seq}`, 25) }));
    if (more !== 0 && !hidden) {
      el.append(svg("text", { class: "more", x: NODE_W - 8, y: 17, "text-anchor": "end", text: more > 0 ? `+${more}` : "+" }));
    }
    root.append(el);
  }
  put(box, root);
  // Keep the selected node in view (a long "why" puts the event itself at the far right).
  const at = pos.get(g.selected) || pos.get(g.root);
  if (at) {
    box.scrollLeft = Math.max(0, at.x + NODE_W / 2 - box.clientWidth / 2);
    box.scrollTop = Math.max(0, at.y + NODE_H / 2 - box.clientHeight / 2);
  }
}

async function clickNode(id) {
  const g = state.graph;
  if (!g) return;
  g.selected = id;
  const node = g.nodes.get(id);
  if (node && node.actor === HIDDEN) {
    const panel = $("event-detail");
    put(panel, h("h3", {}, `#${node.seq} ${node.kind}`), h("p", { class: "muted" }, "An event your token may not see: the graph keeps its place, nothing more."));
    panel.hidden = false;
    drawGraph();
    return;
  }
  showEvent(id);
  if (!g.expanded.has(id)) await expand(id, 1);
  else drawGraph();
  const again = document.querySelector(`[data-testid="graph-node"][data-event-id="${CSS.escape(id)}"]`);
  if (again) again.focus();
}

async function traceAll() {
  const g = state.graph;
  if (!g) return;
  await expand(g.root, 50);
}

async function showEvent(id) {
  let ev = state.events.get(id);
  if (!ev) ev = remember(await attempt(() => api(`/events/${encodeURIComponent(id)}`), "event"));
  const panel = $("event-detail");
  if (!ev) {
    panel.hidden = true;
    return;
  }
  const m = ev.meta || {};
  put(panel,
    h("h3", {}, `#${ev.seq} ${ev.kind}`),
    h("dl", { class: "kv" },
      h("dt", {}, "actor"), h("dd", {}, principalChip(ev.actor)),
      h("dt", {}, "committed"), h("dd", { title: ev.ts }, `${new Date(ev.ts).toLocaleString()} (${fmtAgo(ev.ts)})`),
      ev.at ? [h("dt", {}, "world time"), h("dd", {}, ev.at)] : null,
      ev.thread ? [h("dt", {}, "thread"), h("dd", {}, h("button", { type: "button", class: "link", onclick: () => { showTab("threads"); openThread(`thread:${ev.thread}`); } }, ev.thread))] : null,
      h("dt", {}, "causes"), h("dd", {}, ev.causes && ev.causes.length ? refs(ev.causes, "cause") : "none (an origin)"),
      h("dt", {}, "id"), h("dd", { class: "mono" }, ev.id),
      ev.digest ? [h("dt", {}, "digest"), h("dd", { class: "mono", title: ev.digest }, clip(ev.digest, 24))] : null),
    Object.keys(m).length ? [h("h3", {}, "Meta"), h("pre", {}, JSON.stringify(m, null, 2))] : null,
    ev.content !== null && ev.content !== undefined
      ? [h("h3", {}, "Content"), h("pre", { "data-testid": "event-content" }, typeof ev.content === "string" ? ev.content : JSON.stringify(ev.content, null, 2))]
      : ev.erased ? h("p", { class: "muted" }, "Content erased.") : null,
    h("button", { type: "button", onclick: () => inspect(ev.id) }, "Make this the graph's root"),
  );
  panel.hidden = false;
}

// -- wiring ---------------------------------------------------------------------------------

function filterTimeline(filter) {
  const form = $("timeline-filter");
  for (const name of ["kind", "actor", "thread"]) form.elements[name].value = filter[name] || "";
  state.filter = Object.fromEntries(Object.entries(filter).filter(([, v]) => v));
  showTab("timeline");
  loadTimeline();
}

function wire() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    notice(null);
    start();
  });
  $("sign-out").addEventListener("click", () => signOut());
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => showTab(tab.id.slice(4)));
    tab.addEventListener("keydown", (ev) => {
      const i = tabs.indexOf(tab);
      const next = ev.key === "ArrowRight" ? tabs[(i + 1) % tabs.length] : ev.key === "ArrowLeft" ? tabs[(i + tabs.length - 1) % tabs.length] : null;
      if (next) {
        next.focus();
        showTab(next.id.slice(4));
      }
    });
  }
  $("timeline-filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = ev.target;
    filterTimeline({ kind: form.elements.kind.value.trim(), actor: form.elements.actor.value.trim(), thread: form.elements.thread.value.trim() });
  });
  $("timeline-filter").addEventListener("reset", () => {
    state.filter = {};
    setTimeout(loadTimeline, 0);
  });
  $("timeline-more").addEventListener("click", () => loadTimeline(true));
  $("memory-agent").addEventListener("change", (ev) => selectMemoryAgent(ev.target.value));
  $("recall-form").addEventListener("submit", recall);
  $("verify-run").addEventListener("click", loadVerify);
  $("dir-causes").addEventListener("click", () => setDirection("causes"));
  $("dir-effects").addEventListener("click", () => setDirection("effects"));
  $("trace-origin").addEventListener("click", traceAll);
  showTab("timeline");
}

wire();
start();
