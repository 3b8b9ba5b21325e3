// The conversations, kept in this browser's localStorage so that a reload (or a new tab) finds them again. What
// is read back is checked field by field: an entry another version (or a hand) left malformed is skipped, never
// trusted. When storage is full, images are left out of what is kept, then the oldest conversations. Several tabs
// of the page share the store: each takes in what the others wrote (the latest change to a conversation wins).

export const STORE = "llama-isolate.conversations";
const VERSION = 1;
export const DEFAULT_SETTINGS = { model: "", system: "", temperature: "", topP: "", maxTokens: "512" };

function isText(v) {
  return typeof v === "string";
}

function readMessage(m) {
  if (!m || (m.role !== "user" && m.role !== "assistant") || !isText(m.content)) return null;
  const images = Array.isArray(m.images) ? m.images.filter((u) => isText(u) && u.startsWith("data:image/")) : [];
  return { role: m.role, content: m.content, images, meta: isText(m.meta) ? m.meta : "" };
}

function readSettings(s) {
  const settings = { ...DEFAULT_SETTINGS };
  if (s && typeof s === "object") for (const name of Object.keys(DEFAULT_SETTINGS)) if (isText(s[name])) settings[name] = s[name];
  return settings;
}

function readConversation(c) {
  if (!c || !isText(c.id) || !c.id || !Array.isArray(c.messages)) return null;
  const messages = c.messages.map(readMessage);
  if (messages.some((m) => m === null)) return null;
  return {
    id: c.id,
    title: isText(c.title) ? c.title : "",
    updated: Number.isFinite(c.updated) ? c.updated : 0,
    settings: readSettings(c.settings),
    messages,
  };
}

let counter = 0;
function newId() {
  counter += 1;
  return `c${Date.now().toString(36)}${counter.toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

export class Conversations {
  constructor() {
    this.items = new Map();
    this.open = []; // the ids the panes showed, in pane order
    this.removed = new Set(); // deleted here: not to be taken back from what another tab wrote
    this.onChange = () => {};
    this.read();
  }

  // What storage holds now: { conversations, open }, with what is malformed left out.
  stored() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(STORE) || "null");
    } catch {
      saved = null; // unreadable, or storage refused: nothing
    }
    if (!saved || saved.version !== VERSION || !Array.isArray(saved.conversations)) return { conversations: [], open: [] };
    const conversations = saved.conversations.map(readConversation).filter(Boolean);
    return { conversations, open: Array.isArray(saved.open) ? saved.open.filter(isText) : [] };
  }

  read() {
    const { conversations, open } = this.stored();
    for (const c of conversations) if (!this.items.has(c.id)) this.items.set(c.id, c);
    this.open = open.filter((id) => this.items.has(id));
  }

  // Takes in what another tab of this page wrote: its new conversations, its later changes to ones not in
  // `busy` here, and (when `deletions`) its deletions. Returns the ids that changed here.
  merge(busy, deletions) {
    const changed = new Set();
    const { conversations } = this.stored();
    const there = new Set(conversations.map((c) => c.id));
    for (const c of conversations) {
      if (this.removed.has(c.id) || busy.has(c.id)) continue;
      const mine = this.items.get(c.id);
      if (!mine) this.items.set(c.id, c);
      else if (deletions && c.updated > mine.updated) Object.assign(mine, c);
      else continue;
      changed.add(c.id);
    }
    if (deletions) {
      for (const c of this.list()) {
        if (!there.has(c.id) && !busy.has(c.id)) {
          this.items.delete(c.id);
          changed.add(c.id);
        }
      }
    }
    return changed;
  }

  // A new conversation, kept only once it has a message. Its settings start as `settings` (another's).
  create(settings = DEFAULT_SETTINGS) {
    const c = { id: newId(), title: "", updated: Date.now(), settings: { ...settings }, messages: [] };
    this.items.set(c.id, c);
    return c;
  }

  get(id) {
    return this.items.get(id) || null;
  }

  // The conversations worth listing (those with a message), the latest first.
  list() {
    return [...this.items.values()].filter((c) => c.messages.length).sort((a, b) => b.updated - a.updated);
  }

  titleOf(c) {
    if (c.title) return c.title;
    const first = c.messages.find((m) => m.role === "user");
    const text = first ? first.content.replace(/\s+/g, " ").trim() : "";
    return text ? (text.length > 48 ? `${text.slice(0, 47)}…` : text) : "New conversation";
  }

  rename(id, title) {
    const c = this.get(id);
    if (!c) return;
    c.title = title.trim().slice(0, 200);
    this.save();
  }

  remove(id) {
    this.items.delete(id);
    this.removed.add(id);
    this.open = this.open.map((o) => (o === id ? null : o));
    this.save();
  }

  touch(c) {
    c.updated = Date.now();
    this.save();
  }

  // Writes everything (after taking in the conversations another tab added since, so that none is lost);
  // returns "" or a sentence saying what could not be kept.
  save() {
    this.merge(new Set(), false);
    const kept = (conversations, images) => ({
      version: VERSION,
      open: this.open,
      conversations: conversations.map((c) => ({
        ...c,
        messages: c.messages.map((m) => ({ ...m, images: images ? m.images : [] })),
      })),
    });
    const drafts = this.open.map((id) => this.get(id)).filter((c) => c && !c.messages.length); // their settings
    let conversations = [...this.list(), ...drafts];
    let note = "";
    for (const images of [true, false]) {
      for (;;) {
        try {
          localStorage.setItem(STORE, JSON.stringify(kept(conversations, images)));
          this.onChange(note);
          return note;
        } catch {
          if (!images && conversations.length > 1) {
            conversations = conversations.filter((c) => c.messages.length).slice(0, -1);
            note = "This browser's storage is full: the oldest conversations are no longer kept.";
          } else break;
        }
      }
      note = "This browser's storage is full: images are not kept after a reload.";
    }
    note = "This browser does not keep conversations (its storage is off or full).";
    this.onChange(note);
    return note;
  }
}
