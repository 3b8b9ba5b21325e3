// The conversations, kept in this browser's localStorage so that a reload (or a new tab) finds them again.
//
// What is read back is checked field by field: a malformed message is skipped, never trusted. What cannot be read
// at all is never overwritten: a store written by a newer version of the page is left alone (this page then keeps
// nothing), and unreadable text is moved aside to a backup key first. When storage is full, images are left out
// of what is kept, then the oldest conversations. Several tabs of the page share the store: before each write a
// tab takes in what the others wrote, and each change carries its time, so the latest change to a conversation
// wins wherever it was made.

export const STORE = "llama-isolate.conversations";
const BACKUP = `${STORE}.unreadable`;
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
  if (s && typeof s === "object") {
    for (const name of Object.keys(DEFAULT_SETTINGS)) if (isText(s[name])) settings[name] = s[name];
  }
  return settings;
}

function readConversation(c) {
  if (!c || typeof c !== "object" || !isText(c.id) || !c.id || !Array.isArray(c.messages)) return null;
  const updated = Number.isFinite(c.updated) ? c.updated : 0;
  return {
    id: c.id,
    title: isText(c.title) ? c.title.slice(0, 200) : "",
    updated,
    changed: Number.isFinite(c.changed) ? c.changed : updated,
    settings: readSettings(c.settings),
    messages: c.messages.map(readMessage).filter(Boolean),
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
    this.removed = new Map(); // id -> when it was deleted here: taken back from another tab only if changed since
    this.busy = () => new Set(); // the ids being answered here (set by the page): never changed from elsewhere
    this.onChange = () => {}; // (note, ids changed from elsewhere)
    this.keeping = true; // false: the store is another version's, and is left alone
    this.readNote = ""; // what could not be read, said once and kept
    this.saveNote = ""; // what the last save could not keep
    this.read();
  }

  // What storage holds now: { conversations, open }, or null when it holds something this page cannot read.
  stored() {
    let raw = null;
    try {
      raw = localStorage.getItem(STORE);
    } catch {
      return { conversations: [], open: [] }; // storage is off: nothing kept, nothing to lose
    }
    if (raw === null) return { conversations: [], open: [] };
    let saved = null;
    try {
      saved = JSON.parse(raw);
    } catch {
      return null;
    }
    if (!saved || saved.version !== VERSION || !Array.isArray(saved.conversations)) return null;
    const seen = new Set();
    const conversations = [];
    for (const c of saved.conversations.map(readConversation)) {
      if (c && !seen.has(c.id)) {
        seen.add(c.id);
        conversations.push(c);
      }
    }
    return { conversations, open: Array.isArray(saved.open) ? saved.open.filter(isText) : [] };
  }

  read() {
    const stored = this.stored();
    if (stored === null) {
      this.setAside();
      return;
    }
    for (const c of stored.conversations) this.items.set(c.id, c);
    this.open = stored.open.filter((id) => this.items.has(id));
  }

  // Storage holds what this page cannot read: another version's store is left alone; anything else is moved to
  // a backup key (kept until the next such event), so that the page can keep conversations again.
  setAside() {
    let raw = "";
    let version = null;
    try {
      raw = localStorage.getItem(STORE) || "";
      version = JSON.parse(raw).version;
    } catch {
      version = null;
    }
    if (Number.isFinite(version) && version > VERSION) {
      this.keeping = false;
      this.readNote = "Conversations were saved by a newer version of this page: they are left as they are, and this page keeps none.";
      return;
    }
    try {
      localStorage.setItem(BACKUP, raw);
      localStorage.removeItem(STORE);
      this.readNote = `The kept conversations could not be read; their text was moved aside to localStorage "${BACKUP}".`;
    } catch {
      this.keeping = false;
      this.readNote = "The kept conversations could not be read, nor moved aside: this page keeps none.";
    }
  }

  // Takes in what another tab of this page wrote: its new conversations, its later changes to ones not being
  // answered here, and (when `deletions`) its deletions. Returns the ids that changed here.
  merge(deletions, stored = this.stored()) {
    const changed = new Set();
    if (stored === null) return changed;
    const busy = this.busy();
    const there = new Set(stored.conversations.map((c) => c.id));
    for (const c of stored.conversations) {
      if (c.changed <= (this.removed.get(c.id) ?? -Infinity) || busy.has(c.id)) continue;
      this.removed.delete(c.id);
      const mine = this.items.get(c.id);
      if (!mine) this.items.set(c.id, c);
      else if (c.changed > mine.changed) Object.assign(mine, c);
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
    const now = Date.now();
    const c = { id: newId(), title: "", updated: now, changed: now, settings: { ...settings }, messages: [] };
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

  // The title the person gave, else the start of the first question.
  titleOf(c, length = 48) {
    if (c.title) return c.title;
    const first = c.messages.find((m) => m.role === "user");
    if (!first) return "New conversation";
    const text = first.content.replace(/\s+/g, " ").trim();
    if (!text) return first.images.length ? "Image" : "New conversation";
    return text.length > length ? `${text.slice(0, length - 1)}…` : text;
  }

  rename(id, title) {
    const c = this.get(id);
    if (!c) return;
    c.title = title.trim().slice(0, 200);
    this.changed(c, false);
  }

  remove(id) {
    this.items.delete(id);
    this.removed.set(id, Date.now());
    this.save();
  }

  // Keeps a change to `c`; `activity` (a turn, not a rename or a setting) also moves it up the list.
  changed(c, activity = true) {
    c.changed = Date.now();
    if (activity) c.updated = c.changed;
    this.save();
  }

  // A turn here has ended, or was cut off: what another tab changed meanwhile in the conversation's title and
  // settings is taken in (its messages are this tab's, busy here), and the conversation kept.
  settle(c, activity = true) {
    const stored = this.stored();
    const there = stored && stored.conversations.find((s) => s.id === c.id);
    if (there && there.changed > c.changed) {
      c.title = there.title;
      c.settings = there.settings;
    }
    this.changed(c, activity);
  }

  // Writes everything, after taking in what other tabs wrote; returns "" or a sentence saying what is not kept.
  save() {
    const stored = this.keeping ? this.stored() : null; // read once: parsing a large store is not free
    if (this.keeping && stored === null) this.setAside(); // another version, or garbage, came meanwhile
    if (!this.keeping) return this.report("", new Set());
    const merged = this.merge(false, stored);
    const drafts = this.open.map((id) => this.get(id)).filter((c) => c && !c.messages.length); // their settings
    const full = this.list();
    const write = (conversations, images) => {
      const kept = conversations.map((c) => ({
        ...c,
        messages: c.messages.map((m) => ({ ...m, images: images ? m.images : [] })),
      }));
      localStorage.setItem(STORE, JSON.stringify({ version: VERSION, open: this.open, conversations: kept }));
    };
    const attempts = [
      [[...full, ...drafts], true, ""],
      [[...full, ...drafts], false, "This browser's storage is full: images are not kept after a reload."],
    ];
    for (let n = full.length - 1; n >= 1; n -= 1) {
      const lost = full.length - n;
      const which = lost === 1 ? "the oldest conversation is" : `the ${lost} oldest conversations are`;
      attempts.push([full.slice(0, n), false, `This browser's storage is full: ${which} no longer kept.`]);
    }
    for (const [conversations, images, note] of attempts) {
      try {
        write(conversations, images);
        return this.report(note, merged);
      } catch {
        /* too large: try keeping less */
      }
    }
    return this.report("This browser's storage is off or full: the latest changes are not kept after a reload.", merged);
  }

  report(note, merged) {
    this.saveNote = note;
    this.onChange(note, merged);
    return note;
  }

  // What the person should know about keeping: the last save's trouble, else what could not be read.
  get note() {
    return this.saveNote || this.readNote;
  }
}
