// A pane: one conversation on screen, with its settings, its transcript and a box to write in. It sends the
// whole conversation on every turn (the API keeps no state), streams the answer into the page, and keeps the
// conversation in the store as it goes.
import { explain } from "./api.js";
import { Bubble } from "./bubbles.js";
import { button } from "./dom.js";
import { imageFiles, imageUrl } from "./images.js";
import { requestFields, requestMessages } from "./settings.js";
import { Turn } from "./turn.js";

export class Pane {
  constructor(index, app) {
    this.app = app; // { conversations, models(), activate(pane), offerKey(), visible(pane), tell(text) }
    const root = document.getElementById("pane-template").content.firstElementChild.cloneNode(true);
    const part = (selector, name) => {
      const el = root.querySelector(selector);
      el.dataset.testid = `${name}-${index}`;
      return el;
    };
    root.dataset.testid = `pane-${index}`;
    root.setAttribute("aria-label", `Conversation ${index + 1}`);
    this.root = root;
    this.title = part(".title", "title");
    this.model = part("select.model", "model");
    this.settingsToggle = part(".settings-toggle", "settings-toggle");
    this.settingsForm = part(".settings", "settings");
    this.fields = {
      system: part(".system", "system"),
      temperature: part(".temperature", "temperature"),
      topP: part(".top-p", "top-p"),
      maxTokens: part(".max-tokens", "max-tokens"),
    };
    this.transcript = part(".transcript", "transcript");
    this.ttftEl = part(".ttft", "ttft");
    this.speedEl = part(".speed", "speed");
    this.usageEl = part(".usage", "usage");
    this.errorEl = part(".error", "error");
    this.form = part(".compose", "compose");
    this.attachments = part(".attachments", "attachments");
    this.input = part(".compose textarea", "input");
    this.attachButton = part(".attach", "attach");
    this.fileInput = part(".file", "file");
    this.sendButton = part(".send", "send");
    this.stopButton = part(".stop", "stop");
    this.conversation = null;
    this.pending = []; // data: URLs attached to the next question
    this.controller = null; // the running request's AbortController
    this.current = null; // the running turn's { answer, before, asked } (see start and interrupt)
    this.errorKind = ""; // what the error shown is about ("models": the list did not load)
    this.bubbles = [];
    this.follow = true; // keep the latest question in view while its answer grows, until the person scrolls
    this.wire();
    this.setState("idle");
  }

  wire() {
    this.root.addEventListener("focusin", () => this.app.activate(this));
    this.root.addEventListener("pointerdown", () => this.app.activate(this));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      } else if (event.key === "Escape" && this.controller) this.stop();
    });
    this.input.addEventListener("paste", (event) => this.takeImages(event, event.clipboardData));
    this.root.addEventListener("dragover", (event) => {
      if (this.takesImages()) event.preventDefault();
    });
    this.root.addEventListener("drop", (event) => this.takeImages(event, event.dataTransfer));
    this.attachButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.attach([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    this.stopButton.addEventListener("click", () => this.stop());
    this.settingsToggle.addEventListener("click", () => this.openSettings(this.settingsForm.hidden));
    this.settingsForm.addEventListener("submit", (event) => event.preventDefault());
    for (const [name, el] of Object.entries(this.fields)) {
      el.addEventListener("input", () => {
        this.conversation.settings[name] = el.value;
        this.app.conversations.changed(this.conversation, false);
      });
    }
    this.model.addEventListener("change", () => {
      this.conversation.settings.model = this.model.value;
      this.app.conversations.changed(this.conversation, false);
      this.showAttach();
    });
    for (const stop of ["wheel", "touchmove"]) this.transcript.addEventListener(stop, () => (this.follow = false), { passive: true });
  }

  get busy() {
    return this.controller !== null;
  }

  setState(state) {
    this.root.dataset.state = state; // idle | waiting | streaming
    const busy = state !== "idle";
    this.sendButton.disabled = busy;
    this.stopButton.disabled = !busy;
    for (const b of this.transcript.querySelectorAll(".actions button")) b.disabled = busy;
  }

  // Shows what went wrong (an Error, or a sentence), the server's own words behind Details; null clears it.
  showError(err, kind = "") {
    this.errorKind = err ? kind : "";
    if (!err) {
      this.errorEl.replaceChildren();
      this.errorEl.hidden = true;
      return;
    }
    const { text, detail } = err instanceof Error ? explain(err) : { text: String(err), detail: "" };
    const line = document.createElement("span");
    line.className = "error-text";
    line.textContent = text;
    this.errorEl.replaceChildren(line);
    if (detail) {
      const more = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = "Details";
      const body = document.createElement("code");
      body.textContent = detail;
      more.append(summary, body);
      this.errorEl.appendChild(more);
    }
    this.errorEl.hidden = false;
    return err;
  }

  // --- the conversation and its settings ------------------------------------------------------------------
  show(conversation) {
    this.conversation = conversation;
    this.showError(null);
    this.ttftEl.textContent = "";
    this.speedEl.textContent = "";
    this.usageEl.textContent = "";
    this.refreshSettings();
    this.redraw();
  }

  // The settings fields (and the model) as the conversation has them.
  refreshSettings() {
    for (const [name, el] of Object.entries(this.fields)) {
      if (el.value !== this.conversation.settings[name]) el.value = this.conversation.settings[name];
    }
    this.refreshModels();
  }

  refreshTitle() {
    this.title.textContent = this.app.conversations.titleOf(this.conversation);
  }

  // The model list, with this conversation's model chosen when the server has it (else the first).
  refreshModels() {
    const models = this.app.models();
    const wanted = this.conversation.settings.model;
    this.model.replaceChildren(
      ...models.map((m) => {
        const option = document.createElement("option");
        option.value = m.id;
        option.textContent = m.id.split("/").pop() || m.id; // a path's file name; the full id on hover
        option.title = m.id;
        return option;
      }),
    );
    if (models.some((m) => m.id === wanted)) this.model.value = wanted;
    this.model.disabled = !models.length;
    this.showAttach();
  }

  chosenModel() {
    return this.app.models().find((m) => m.id === this.model.value) || null;
  }

  takesImages() {
    const model = this.chosenModel();
    return Boolean(model && model.images);
  }

  showAttach() {
    this.attachButton.hidden = !this.takesImages();
  }

  // --- the transcript ---------------------------------------------------------------------------------------
  redraw() {
    this.refreshTitle();
    this.bubbles = this.conversation.messages.map((m) => new Bubble(m));
    this.transcript.replaceChildren(...this.bubbles.map((b) => b.el));
    this.refreshActions();
    this.transcript.scrollTop = this.transcript.scrollHeight;
  }

  // Edit on each question; on the last message, Regenerate (an answer) or Answer (a question left unanswered).
  refreshActions() {
    const last = this.bubbles.length - 1;
    this.bubbles.forEach((bubble, index) => {
      bubble.actions.replaceChildren();
      if (bubble.message.role === "user") {
        const why = "Change this question and send it again (the answers after it are replaced)";
        bubble.action("edit", "Edit", why, () => {
          if (!this.busy) bubble.edit((text) => this.resend(index, text));
        });
      }
      if (index !== last) return;
      if (bubble.message.role === "assistant") {
        bubble.action("regenerate", "Regenerate", "Answer the last question again", () => this.regenerate());
      } else {
        bubble.action("regenerate", "Answer", "Answer this question", () => this.regenerate());
      }
    });
  }

  // Keeps the latest question at the top of the view while its answer grows below it.
  keepInView(question) {
    if (!this.follow || !question) return;
    const t = this.transcript;
    t.scrollTop = Math.min(t.scrollHeight - t.clientHeight, question.el.offsetTop - 8);
  }

  openSettings(open) {
    this.settingsForm.hidden = !open;
    this.settingsToggle.setAttribute("aria-expanded", String(open));
  }

  // --- images -----------------------------------------------------------------------------------------------
  // A paste or a drop: its images, when this conversation's model reads them, are attached (not pasted as text).
  takeImages(event, transfer) {
    const files = imageFiles(transfer);
    if (files.length && this.takesImages()) {
      event.preventDefault();
      this.attach(files);
    }
  }

  async attach(files) {
    const refused = [];
    for (const file of files) {
      try {
        this.pending.push(await imageUrl(file));
      } catch (err) {
        refused.push(err.message);
      }
    }
    this.showError(refused.length ? refused.join(" ") : null);
    this.showAttachments();
  }

  showAttachments() {
    this.attachments.replaceChildren(
      ...this.pending.map((url, i) => {
        const item = document.createElement("span");
        item.className = "attachment";
        const img = document.createElement("img");
        img.alt = "image to send";
        img.src = url;
        const remove = button("remove", "×", "Do not send this image", () => {
          this.pending.splice(i, 1);
          this.showAttachments();
        });
        item.append(img, remove);
        return item;
      }),
    );
    this.attachments.hidden = !this.pending.length;
  }

  // --- turns ------------------------------------------------------------------------------------------------
  send() {
    if (this.busy) return;
    const text = this.input.value.trim();
    if (!text && !this.pending.length) return;
    const question = { role: "user", content: text, images: this.pending, meta: "" };
    const before = this.conversation.messages;
    if (!this.start([...before, question], question)) return;
    this.input.value = "";
    this.pending = [];
    this.showAttachments();
  }

  // Sends an edited question in the place of the one at `index` (the turns after it go).
  resend(index, text) {
    const before = this.conversation.messages;
    this.start([...before.slice(0, index), { role: "user", content: text, images: before[index].images, meta: "" }], null);
  }

  // Answers the last question again (or for the first time, when a reload cut its answer off).
  regenerate() {
    const before = this.conversation.messages;
    const last = before[before.length - 1];
    const asked = last && last.role === "assistant" ? before.slice(0, -1) : before;
    if (asked.length) this.start(asked, null);
  }

  // Runs a turn on `messages`, whose last is a question; false (nothing changed) when it cannot be asked. Until
  // an answer comes, the conversation as it was is kept aside: a turn that gets nothing back restores it (the
  // answer a regeneration was to replace, the turns after an edited question) and gives `asked`, the question
  // this turn added, back to the box.
  start(messages, asked) {
    if (this.busy) return false;
    const fields = this.checked(messages);
    if (!fields) return false;
    const c = this.conversation;
    const before = { messages: c.messages, updated: c.updated };
    c.messages = messages;
    this.app.conversations.changed(c);
    this.redraw();
    this.run(fields, before, asked);
    return true;
  }

  // The request's fields for this conversation, or null after saying what stands in the way.
  checked(messages) {
    if (!this.chosenModel()) {
      this.showError("There is no model to ask yet: the server's list of models did not load.", "models");
      return null;
    }
    if (!this.takesImages() && messages.some((m) => m.images.length)) {
      this.showError(
        "This conversation holds images, and the chosen model cannot read them. Pick a model that can, or start a " +
          "new conversation.",
      );
      return null;
    }
    try {
      return requestFields(this.conversation.settings);
    } catch (err) {
      this.showError(err.message);
      this.openSettings(true);
      return null;
    }
  }

  stop() {
    if (this.controller) this.controller.abort(); // drops the connection; the server then cancels the work
  }

  // The page is going away mid-turn. What has come of the answer is kept, marked. With nothing yet, a new
  // question stays, to be answered after the reload; a regeneration or an edit leaves the conversation as it was.
  interrupt() {
    if (!this.current) return;
    const { answer, before, asked } = this.current;
    const c = this.conversation;
    this.current = null;
    if (answer.content) answer.meta = "interrupted: the page was closed";
    else if (asked) c.messages = c.messages.filter((m) => m !== answer);
    else Object.assign(c, before);
    this.app.conversations.settle(c);
  }

  async run(fields, before, asked) {
    const c = this.conversation;
    const answer = { role: "assistant", content: "", images: [], meta: "" };
    const body = { model: this.model.value, messages: requestMessages(c.settings, c.messages), ...fields };
    c.messages.push(answer);
    const bubble = new Bubble(answer);
    const question = this.bubbles[this.bubbles.length - 1];
    this.bubbles.push(bubble);
    this.transcript.appendChild(bubble.el);
    bubble.el.dataset.state = "waiting";
    this.follow = true;
    this.keepInView(question);
    const controller = new AbortController();
    this.controller = controller;
    this.current = { answer, before, asked };
    this.setState("waiting");
    this.showError(null);
    const figures = { ttft: this.ttftEl, speed: this.speedEl, usage: this.usageEl };
    const turn = new Turn(answer, bubble, figures, {
      onFirst: () => {
        bubble.el.dataset.state = "streaming";
        this.setState("streaming");
      },
      onDraw: () => this.keepInView(question),
    });
    const outcome = await turn.stream(body, controller.signal);
    this.controller = null;
    if (this.current === null) return; // the page is going away (interrupt): nothing more to keep or show
    this.current = null;
    answer.meta = turn.notes(outcome);
    bubble.meta.textContent = answer.meta;
    if (turn.finishReason) bubble.el.dataset.finish = turn.finishReason;
    bubble.el.dataset.state = outcome;
    const restored = answer.content === "" && outcome !== "done";
    if (restored) this.restore(before, asked);
    else this.refreshActions();
    this.app.conversations.settle(c, !restored);
    this.refreshSettings();
    this.refreshTitle();
    this.setState("idle");
    if (turn.failure) {
      this.showError(turn.failure);
      if (turn.failure.status === 401) this.app.offerKey();
      if (!this.app.visible(this)) this.app.tell(`“${this.title.textContent}”: ${explain(turn.failure).text}`);
    }
  }

  // Nothing came back: the conversation is as it was before the turn, and the question goes back to the box
  // (before what was written there since).
  restore(before, asked) {
    Object.assign(this.conversation, before);
    this.redraw();
    if (!asked) return;
    this.input.value = [asked.content, this.input.value].filter(Boolean).join("\n\n");
    this.pending = [...asked.images, ...this.pending];
    this.showAttachments();
  }

  // What is in the box to write in, handed over (to the pane that takes this one's conversation).
  takeDraft() {
    const draft = { text: this.input.value, images: this.pending };
    this.input.value = "";
    this.pending = [];
    this.showAttachments();
    return draft;
  }

  giveDraft(draft) {
    this.input.value = [draft.text, this.input.value].filter(Boolean).join("\n\n");
    this.pending = [...draft.images, ...this.pending];
    this.showAttachments();
  }
}
