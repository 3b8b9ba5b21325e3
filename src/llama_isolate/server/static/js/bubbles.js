// One message on screen: who said it, its images, its text (markdown for the model's answers, plain text for
// the person's questions), a line of figures, and its actions (edit a question, regenerate the last answer).
import { button } from "./dom.js";
import { render } from "./markdown.js";

export class Bubble {
  constructor(message) {
    this.message = message;
    const el = document.createElement("div");
    el.className = `msg ${message.role}`;
    const label = document.createElement("div");
    label.className = "role";
    label.textContent = message.role === "user" ? "You" : "Model";
    this.images = document.createElement("div");
    this.images.className = "images";
    this.body = document.createElement("div");
    this.body.className = "text";
    this.meta = document.createElement("div");
    this.meta.className = "meta";
    this.actions = document.createElement("div");
    this.actions.className = "actions";
    el.append(label, this.images, this.body, this.meta, this.actions);
    this.el = el;
    this.showImages(message.images);
    this.showText(message.content);
    this.meta.textContent = message.meta || "";
  }

  showImages(urls) {
    this.images.replaceChildren(
      ...urls.map((url) => {
        const img = document.createElement("img");
        img.alt = "attached image";
        img.src = url; // a data: URL of the person's own file
        return img;
      }),
    );
    this.images.hidden = !urls.length;
  }

  showText(text) {
    if (this.message.role === "assistant") render(this.body, text);
    else this.body.textContent = text;
  }

  action(name, label, title, onClick) {
    return this.actions.appendChild(button(name, label, title, onClick));
  }

  // Turns a question into an editor: `onSend(text)` sends the edited question in its place, Cancel puts it back.
  edit(onSend) {
    const area = document.createElement("textarea");
    area.className = "edit-text";
    area.value = this.message.content;
    area.rows = Math.min(8, Math.max(2, area.value.split("\n").length));
    const row = document.createElement("div");
    row.className = "edit-buttons";
    const send = button("edit-send", "Send", "Send the changed question");
    const cancel = button("edit-cancel", "Cancel", "Keep the question as it was");
    row.append(send, cancel);
    const restore = () => {
      area.remove();
      row.remove();
      this.body.hidden = false;
      this.actions.hidden = false;
    };
    send.addEventListener("click", () => {
      const text = area.value.trim();
      if (!text && !this.message.images.length) return;
      restore();
      onSend(text);
    });
    cancel.addEventListener("click", restore);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send.click();
      } else if (event.key === "Escape") cancel.click();
    });
    this.body.hidden = true;
    this.actions.hidden = true;
    this.body.after(area, row);
    area.focus();
  }
}
