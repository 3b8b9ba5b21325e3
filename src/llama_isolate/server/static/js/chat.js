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

let models = [];
let storageNote = "";

function status(text) {
  statusEl.textContent = text || storageNote;
}

const conversations = new Conversations();
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
  // id -> pane index, for the conversations the visible panes show
  shown() {
    const visible = phone.matches ? panes.slice(0, 1) : panes;
    return new Map(visible.map((p, i) => [p.conversation.id, i]));
  },
  retitle() {
    for (const p of panes) p.refreshTitle();
  },
  // Shows conversation `id` in the active pane (or brings forward the pane that already shows it).
  open(id) {
    const c = conversations.get(id);
    if (!c) return;
    closeMenu();
    const showing = [...app.shown().entries()].find(([cid]) => cid === id);
    if (showing) {
      app.activate(panes[showing[1]]);
      panes[showing[1]].input.focus();
      return;
    }
    const pane = app.active || panes[0];
    if (pane.busy) {
      status("That pane is still answering: stop it first, or open the conversation in the other pane.");
      return;
    }
    pane.show(c);
    remember();
  },
  openNew() {
    closeMenu();
    const pane = app.active || panes[0];
    if (pane.busy) {
      status("That pane is still answering: stop it first, or start the conversation in the other pane.");
      return;
    }
    if (pane.conversation.messages.length) pane.show(conversations.create(pane.conversation.settings));
    pane.input.focus();
    remember();
  },
  remove(id) {
    const pane = panes.find((p) => p.conversation.id === id);
    if (pane && pane.busy) {
      status("That conversation is still answering: stop it first.");
      return;
    }
    conversations.remove(id);
    if (pane) pane.show(conversations.create(pane.conversation.settings));
    remember();
  },
};

const panes = [0, 1].map((i) => new Pane(i, app));
const sidebar = new Sidebar(app);
conversations.onChange = (note) => {
  storageNote = note;
  if (note) status(note);
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
    status("");
  } catch (err) {
    models = [];
    status(explain(err).text);
    if (err.status === 401) app.offerKey();
  }
  for (const p of panes) p.refreshModels();
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
  panes.forEach((pane, i) => {
    const kept = conversations.get(conversations.open[i] || "");
    pane.show(kept || conversations.create(DEFAULT_SETTINGS));
    panesEl.appendChild(pane.root);
  });
  app.activate(panes[0]);
  remember();
  if (!rendered) document.body.dataset.markdown = "off";
  document.body.dataset.ready = "true";
  loadModels();
});
phone.addEventListener("change", () => {
  app.activate(panes[0]);
  sidebar.draw();
});
window.addEventListener("pagehide", () => conversations.save()); // a partial answer survives a reload too

// Another tab of this page wrote the store: take its changes in, and show them where a pane is idle.
window.addEventListener("storage", (event) => {
  if (event.key !== STORE && event.key !== null) return;
  const busy = new Set(panes.filter((p) => p.busy).map((p) => p.conversation.id));
  const changed = conversations.merge(busy, true);
  for (const pane of panes) {
    if (pane.busy || !changed.has(pane.conversation.id)) continue;
    pane.show(conversations.get(pane.conversation.id) || conversations.create(pane.conversation.settings));
  }
  sidebar.draw();
});
