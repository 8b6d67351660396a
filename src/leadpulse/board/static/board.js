// LeadPulse board: hot leads and the live feed, kept current by server-sent events.
// Every piece of data is written with textContent (never innerHTML): lead ids and traits are
// untrusted text. The page's Content-Security-Policy allows scripts from this server only.
"use strict";

const KINDS = {
  promoted: ["↑", "promoted to"], demoted: ["↓", "dropped to"], recycled: ["↺", "recycled to"],
  advanced: ["→", "moved to"], closed: ["✓", "closed as"], sla_overdue: ["!", "waiting in"],
};

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function leadUrl(id) { return "/board/leads/" + encodeURIComponent(id); }

function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (!isFinite(s) || s < 60) return "just now";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

function words(ruleId, description) { return description || String(ruleId).replace(/_/g, " "); }

function points(v) {
  const r = Math.round(v * 10) / 10;
  return (r < 0 ? "−" : "+") + (Number.isInteger(r) ? Math.abs(r).toFixed(0) : Math.abs(r).toFixed(1));
}

let shown = new Map();  // lead id -> score last shown, to mark what changed

function card(lead, rank) {
  const li = el("li", "card");
  li.dataset.lead = lead.lead_id;
  li.appendChild(el("span", "rank", rank));
  const main = el("div", "main");
  const name = el("div", "name");
  const a = el("a", null, lead.who.name || lead.lead_id);
  a.href = lead.url;
  name.appendChild(a);
  main.appendChild(name);
  const sub = [lead.who.role, lead.who.company].filter(Boolean).join(" · ");
  main.appendChild(el("div", "sub", (sub ? sub + " · " : "") + "active " + lead.last_event));
  li.appendChild(main);
  const nums = el("div", "nums");
  nums.appendChild(el("span", "score", Math.round(lead.score)));
  nums.appendChild(el("span", "pill stage-" + lead.stage, lead.stage.toUpperCase()));
  const grade = el("span", "grade grade-" + lead.fit_grade, lead.fit_grade);
  grade.title = lead.grade_title;
  nums.appendChild(grade);
  const data = el("span", "data", lead.data);
  data.title = "share of the model's fit traits known";
  nums.appendChild(data);
  li.appendChild(nums);
  const signals = el("ul", "signals");
  for (const s of lead.signals) {
    const item = el("li");
    item.appendChild(el("span", "what", s.words + " "));
    if (s.ago) item.appendChild(el("span", "when", s.ago + " "));
    item.appendChild(el("span", "pts", s.points));
    signals.appendChild(item);
  }
  li.appendChild(signals);
  const before = shown.get(lead.lead_id);
  if (shown.size && (before === undefined || Math.round(before) !== Math.round(lead.score))) li.classList.add("fresh");
  return li;
}

async function refreshHot() {
  const res = await fetch("/board/hot.json", { headers: { Accept: "application/json" } });
  if (res.status === 401) { location.assign("/board/signin"); return; }
  if (!res.ok) return;
  const body = await res.json();
  const list = document.getElementById("hot");
  const cards = body.leads.map((lead, i) => card(lead, i + 1));
  list.replaceChildren(...cards);
  document.getElementById("hot-empty").hidden = body.leads.length > 0;
  document.getElementById("asof").textContent = "updated " + new Date(body.as_of).toLocaleTimeString();
  const first = shown.size === 0;
  shown = new Map(body.leads.map((l) => [l.lead_id, l.score]));
  if (first) shown.set("", 0);  // nothing is "fresh" on the first paint
  setTimeout(() => cards.forEach((c) => c.classList.remove("fresh")), 2500);
}

function feedItem(h, fresh) {
  const [icon, verb] = KINDS[h.kind] || ["•", h.kind];
  const li = el("li", "kind-" + h.kind + (fresh ? " fresh" : ""));
  li.appendChild(el("span", "icon", icon));
  const line1 = el("div", "line1");
  const who = h.who && (h.who.name || h.who.company);
  const a = el("a", null, who || h.lead_id);
  a.href = leadUrl(h.lead_id);
  line1.appendChild(a);
  line1.appendChild(document.createTextNode(" " + verb + " "));
  line1.appendChild(el("b", null, String(h.stage).toUpperCase()));
  li.appendChild(line1);
  const top = (h.top_signals || [])[0];
  const bits = ["score " + Math.round(h.score), ago(h.crossed_at)];
  if (h.reason) bits.push(String(h.reason));
  else if (top && h.kind === "promoted") bits.push(words(top.rule_id, top.description) + " " + points(top.points));
  li.appendChild(el("div", "line2", bits.join(" · ")));
  return li;
}

const seen = new Set();  // handoff ids shown: the stream and feed.json may both bring one

function addFeed(h, fresh) {
  if (seen.has(h.handoff_id)) return;
  seen.add(h.handoff_id);
  const list = document.getElementById("feed");
  list.prepend(feedItem(h, fresh));
  while (list.children.length > 50) list.lastChild.remove();
  document.getElementById("feed-empty").hidden = true;
}

async function loadFeed() {
  const res = await fetch("/board/feed.json");
  if (!res.ok) return;
  const body = await res.json();
  document.getElementById("feed").replaceChildren();
  seen.clear();
  for (const h of body.handoffs) addFeed(h, false);
  document.getElementById("feed-empty").hidden = body.handoffs.length > 0;
}

function status(state, text) {
  const live = document.getElementById("live");
  live.dataset.state = state;
  live.lastChild.textContent = text;
}

let pending = null;
function soon() {  // many handoffs at once: one refresh
  if (pending) return;
  pending = setTimeout(() => { pending = null; refreshHot(); }, 250);
}

function connect() {
  const stream = new EventSource("/board/events");
  stream.addEventListener("ready", () => { status("live", "live"); refreshHot(); loadFeed(); });
  stream.addEventListener("handoff", (e) => { addFeed(JSON.parse(e.data), true); soon(); });
  stream.addEventListener("error", () => status("down", "reconnecting…"));  // EventSource retries by itself
}

document.addEventListener("DOMContentLoaded", () => {
  refreshHot();
  loadFeed();
  connect();
  setInterval(refreshHot, 60000);  // ages and decay move on even when nothing is handed off
});
