// The list of kept conversations: open one in the active pane, rename it in place, delete it, or start a new one.
import { button } from "./dom.js";

export class Sidebar {
  constructor(app) {
    this.app = app; // { conversations, open(id), openNew(), remove(id), shown() }
    this.el = document.getElementById("sidebar");
    this.list = this.el.querySelector(".conversations");
    this.el.querySelector(".new").addEventListener("click", () => app.openNew());
    this.renaming = null; // the id being renamed: a redraw must not take its field away
  }

  draw() {
    if (this.renaming) return;
    const shown = this.app.shown(); // id -> pane number, for the conversations on screen
    const items = this.app.conversations.list().map((c) => this.item(c, shown.get(c.id)));
    this.list.replaceChildren(...items);
    this.list.dataset.count = String(items.length);
  }

  item(c, pane) {
    const li = document.createElement("li");
    li.className = "conversation";
    li.dataset.testid = "conversation";
    li.dataset.id = c.id;
    if (pane !== undefined) li.dataset.pane = String(pane + 1);
    const title = this.app.conversations.titleOf(c);
    const open = button("open", title, "Open this conversation", () => this.app.open(c.id));
    const rename = button("rename", "✎", "Rename", () => this.rename(li, c));
    const remove = button("delete", "✕", "Delete", () => {
      if (window.confirm(`Delete “${title}”? This cannot be undone.`)) this.app.remove(c.id);
    });
    const actions = document.createElement("span");
    actions.className = "item-actions";
    actions.append(rename, remove);
    li.append(open, actions);
    return li;
  }

  rename(li, c) {
    this.renaming = c.id;
    const field = document.createElement("input");
    field.className = "rename-field";
    const before = this.app.conversations.titleOf(c, 200);
    field.value = before;
    field.setAttribute("aria-label", "New name");
    let done = false;
    const end = (keep) => {
      if (done) return;
      done = true;
      this.renaming = null;
      const title = field.value.trim();
      if (keep && title && title !== before) this.app.conversations.rename(c.id, title);
      this.draw();
      this.app.retitle();
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter") end(true);
      else if (event.key === "Escape") end(false);
    });
    field.addEventListener("blur", () => end(true));
    li.replaceChildren(field);
    field.focus();
    field.select();
  }
}
