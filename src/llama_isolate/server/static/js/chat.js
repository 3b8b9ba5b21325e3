// The chat page: conversations kept in this browser, two panes side by side on a wide screen (one, full height,
// on a phone), each with its own model and settings, against the OpenAI-style API of the server that serves the
// page. Plain ES modules, no build step of our own, nothing loaded from elsewhere.
import { explain, getKey, listModels, setKey } from "./api.js";
import { ready } from "./markdown.js";
import { Pane } from "./pane.js";
import { Sidebar } from "./sidebar.js";
import { Conversations, DEFAULT_SETTINGS, STORE } from "./store.js";

const statusEl = document.getElementById("status");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const menu = document.querySelector('[data-testid="menu"]');
const phone = window.matchMedia("(max-width: 720px)");
const NOTICE_MS = 8000; // how long a refusal of a click stays in the header

let models = [];
let modelsError = "";
let notice = "";
let noticeTimer = null;

// The header's line: a refusal just now, else why the models did not load, else what storage could not keep.
function status() {
  statusEl.textContent = notice || modelsError || conversations.note;
}

function tell(text) {
  notice = text;
  clearTimeout(noticeTimer);
  noticeTimer = text ? setTimeout(() => tell(""), NOTICE_MS) : null;
  status();
}

const conversations = new Conversations();
const panes = [];

function visiblePanes() {
  return phone.matches ? panes.slice(0, 1) : panes;
}

const app = {
  conversations,
  models: () => models,
  active: null,
  activate(pane) {
    if (phone.matches) pane = panes[0];
    if (app.active === pane) return;
    app.active = pane;
    for (const p of panes) p.root.classList.toggle("active", p === pane);
  },
  offerKey() {
    keyForm.hidden = false;
    keyInput.value = getKey();
  },
  visible(pane) {
    return visiblePanes().includes(pane);
  },
  tell(text) {
    tell(text);
  },
  // id -> number of the visible pane that shows it, for the list's marks
  shown() {
    return new Map(visiblePanes().flatMap((p, i) => (p.conversation ? [[p.conversation.id, i]] : [])));
  },
  retitle() {
    for (const p of panes) p.refreshTitle();
  },
  // Shows conversation `id` in the active pane, or brings forward the visible pane that shows it. A conversation
  // is never in two panes: a hidden pane (on a phone) that shows it gives it up.
  open(id) {
    const c = conversations.get(id);
    if (!c) return;
    closeMenu();
    const holder = panes.find((p) => p.conversation.id === id);
    if (holder && visiblePanes().includes(holder)) {
      app.activate(holder);
      holder.input.focus();
      tell("");
      return;
    }
    const pane = app.active || panes[0];
    if (pane.busy || (holder && holder.busy)) {
      tell("That conversation or this pane is still answering: stop it first.");
      return;
    }
    const draft = holder ? holder.takeDraft() : null; // what was written there goes with the conversation
    if (holder) holder.show(conversations.create(holder.conversation.settings));
    pane.show(c);
    if (draft) pane.giveDraft(draft);
    tell("");
    remember();
  },
  openNew() {
    closeMenu();
    const pane = app.active || panes[0];
    if (pane.busy) {
      tell("This pane is still answering: stop it first, or start the conversation in the other pane.");
      return;
    }
    if (pane.conversation.messages.length) pane.show(conversations.create(pane.conversation.settings));
    pane.input.focus();
    tell("");
    remember();
  },
  remove(id) {
    const pane = panes.find((p) => p.conversation.id === id);
    if (pane && pane.busy) {
      tell("That conversation is still answering: stop it first.");
      return;
    }
    conversations.remove(id);
    if (pane) pane.show(conversations.create(pane.conversation.settings));
    tell("");
    remember();
  },
};

panes.push(...[0, 1].map((i) => new Pane(i, app)));
const sidebar = new Sidebar(app);
conversations.busy = () => new Set(panes.filter((p) => p.busy).map((p) => p.conversation.id));

// Conversations another tab changed: idle panes showing them show them again (or a new one, if deleted there).
function showChanged(changed) {
  for (const pane of panes) {
    if (pane.busy || !pane.conversation || !changed.has(pane.conversation.id)) continue;
    pane.show(conversations.get(pane.conversation.id) || conversations.create(pane.conversation.settings));
  }
}

conversations.onChange = (_note, merged) => {
  status();
  showChanged(merged);
  sidebar.draw();
};

function remember() {
  conversations.open = panes.map((p) => p.conversation.id);
  conversations.save();
}

function closeMenu() {
  document.body.classList.remove("menu-open");
  menu.setAttribute("aria-expanded", "false");
}

menu.addEventListener("click", () => {
  const open = !document.body.classList.contains("menu-open");
  document.body.classList.toggle("menu-open", open);
  menu.setAttribute("aria-expanded", String(open));
});

// --- the model list and the key ----------------------------------------------------------------------------
async function loadModels() {
  try {
    models = await listModels();
    modelsError = "";
  } catch (err) {
    models = [];
    modelsError = explain(err).text;
    if (err.status === 401) app.offerKey();
  }
  status();
  for (const p of panes) {
    p.refreshModels();
    if (models.length && p.errorKind === "models") p.showError(null);
  }
}

if (getKey()) app.offerKey(); // a stored key stays visible, so that it can be changed or cleared
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setKey(keyInput.value.trim());
  loadModels();
});

// --- start --------------------------------------------------------------------------------------------------
const panesEl = document.getElementById("panes");
ready.then((rendered) => {
  const seen = new Set();
  panes.forEach((pane, i) => {
    const kept = conversations.get(conversations.open[i] || "");
    const fresh = !kept || seen.has(kept.id); // never one conversation in two panes
    pane.show(fresh ? conversations.create(DEFAULT_SETTINGS) : kept);
    seen.add(pane.conversation.id);
    panesEl.appendChild(pane.root);
  });
  app.activate(panes[0]);
  remember();
  status();
  if (!rendered) document.body.dataset.markdown = "off";
  document.body.dataset.ready = "true";
  loadModels();
});
phone.addEventListener("change", () => {
  app.activate(panes[0]);
  sidebar.draw();
});

// The page is going away (a reload, a closed tab): what is being answered is kept as it is now.
window.addEventListener("pagehide", () => {
  for (const pane of panes) pane.interrupt();
  conversations.save();
});

// Another tab of this page wrote the store: take its changes in, and show them where a pane is idle.
window.addEventListener("storage", (event) => {
  if (event.key !== STORE && event.key !== null) return;
  if (conversations.keeping && conversations.stored() === null) conversations.setAside();
  showChanged(conversations.merge(true));
  status();
  sidebar.draw();
});
