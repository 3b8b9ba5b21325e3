// A pane: one conversation on screen, with its settings, its transcript and a box to write in. It sends the
// whole conversation on every turn (the API keeps no state), streams the answer into the page, and keeps the
// conversation in the store as it goes.
import { explain, streamChat } from "./api.js";
import { Bubble } from "./bubbles.js";
import { button } from "./dom.js";
import { imageFiles, imageUrl } from "./images.js";
import { requestFields, requestMessages } from "./settings.js";

const STATS_INTERVAL_MS = 250; // live figures change at most this often, so they stay readable
// While it streams, an answer is redrawn (parsed as markdown again) at most every 40 ms, and never more than a
// fifth of the time: a long answer, slower to draw, is redrawn less often, so that the page stays responsive.
const RENDER_INTERVAL_MS = 40;
const RENDER_SHARE = 0.2;

function fmtSeconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// Decode speed: the tokens after the first over the time after the first. The wait for the first token (queue,
// prompt processing) is the time to first token, shown on its own.
function tokensPerSecond(tokens, turn) {
  if (turn.tFirst === null || tokens < 2 || turn.tLast <= turn.tFirst) return null;
  return (tokens - 1) / ((turn.tLast - turn.tFirst) / 1000);
}

export class Pane {
  constructor(index, app) {
    this.app = app; // { conversations, models(), activate(pane), status(text) }
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
    this.input.addEventListener("paste", (event) => {
      const files = imageFiles(event.clipboardData);
      if (files.length && this.takesImages()) {
        event.preventDefault();
        this.attach(files);
      }
    });
    this.root.addEventListener("dragover", (event) => {
      if (this.takesImages()) event.preventDefault();
    });
    this.root.addEventListener("drop", (event) => {
      const files = imageFiles(event.dataTransfer);
      if (files.length && this.takesImages()) {
        event.preventDefault();
        this.attach(files);
      }
    });
    this.attachButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.attach([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    this.stopButton.addEventListener("click", () => this.stop());
    this.settingsToggle.addEventListener("click", () => {
      const open = this.settingsForm.hidden;
      this.settingsForm.hidden = !open;
      this.settingsToggle.setAttribute("aria-expanded", String(open));
    });
    this.settingsForm.addEventListener("submit", (event) => event.preventDefault());
    for (const [name, el] of Object.entries(this.fields)) {
      el.addEventListener("input", () => {
        this.conversation.settings[name] = el.value;
        this.app.conversations.save();
      });
    }
    this.model.addEventListener("change", () => {
      this.conversation.settings.model = this.model.value;
      this.app.conversations.save();
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

  showError(err) {
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
    for (const [name, el] of Object.entries(this.fields)) el.value = conversation.settings[name];
    this.pending = [];
    this.showAttachments();
    this.showError(null);
    this.ttftEl.textContent = "";
    this.speedEl.textContent = "";
    this.usageEl.textContent = "";
    this.refreshModels();
    this.redraw();
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
    this.bubbles.forEach((b, i) => this.offerActions(b, i));
    this.transcript.scrollTop = this.transcript.scrollHeight;
  }

  offerActions(bubble, index) {
    const messages = this.conversation.messages;
    if (bubble.message.role === "user") {
      bubble.action("edit", "Edit", "Change this question and send it again (the answers after it are replaced)", () => {
        if (!this.busy) bubble.edit((text) => this.resend(index, text));
      });
    } else if (index === messages.length - 1) {
      bubble.action("regenerate", "Regenerate", "Answer the last question again", () => this.regenerate());
    }
  }

  // Keeps the latest question at the top of the view while its answer grows below it.
  keepInView(question) {
    if (!this.follow) return;
    const t = this.transcript;
    t.scrollTop = Math.min(t.scrollHeight - t.clientHeight, question.el.offsetTop - 8);
  }

  // --- images -----------------------------------------------------------------------------------------------
  async attach(files) {
    for (const file of files) {
      try {
        this.pending.push(await imageUrl(file));
      } catch (err) {
        this.showError(err.message);
      }
    }
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
    if (!this.ask({ role: "user", content: text, images: this.pending, meta: "" })) return;
    this.input.value = "";
    this.pending = [];
    this.showAttachments();
  }

  resend(index, text) {
    if (this.busy) return;
    const old = this.conversation.messages[index];
    const kept = this.conversation.messages.slice(0, index);
    const before = this.conversation.messages;
    this.conversation.messages = kept;
    if (!this.ask({ role: "user", content: text, images: old.images, meta: "" })) {
      this.conversation.messages = before;
      this.redraw();
    }
  }

  regenerate() {
    const messages = this.conversation.messages;
    if (this.busy || !messages.length || messages[messages.length - 1].role !== "assistant") return;
    const fields = this.checkedFields();
    if (!fields) return;
    messages.pop();
    this.redraw();
    this.run(fields, null);
  }

  checkedFields() {
    try {
      return requestFields(this.conversation.settings);
    } catch (err) {
      this.showError(err.message);
      this.settingsForm.hidden = false;
      this.settingsToggle.setAttribute("aria-expanded", "true");
      return null;
    }
  }

  // Adds a question and runs its turn; false when a setting is wrong (nothing was added).
  ask(question) {
    const fields = this.checkedFields();
    if (!fields) return false;
    this.conversation.messages.push(question);
    this.redraw();
    this.run(fields, question);
    return true;
  }

  stop() {
    if (this.controller) this.controller.abort(); // drops the connection; the server then cancels the work
  }

  // Streams the answer to the conversation's last question. `asked` is the question this turn added, if any:
  // when nothing came back it is taken out again, and its text given back to the box.
  async run(fields, asked) {
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
    if (question) this.keepInView(question);
    const controller = new AbortController();
    this.controller = controller;
    this.setState("waiting");
    this.showError(null);
    this.ttftEl.textContent = "";
    this.speedEl.textContent = "";
    this.usageEl.textContent = "";
    const turn = {
      chunks: 0,
      usage: null,
      finish: null,
      tSent: performance.now(),
      tFirst: null,
      tLast: null,
      shownAt: 0,
      timer: null,
      wait: RENDER_INTERVAL_MS,
    };
    const draw = () => {
      turn.timer = null;
      const start = performance.now();
      bubble.showText(answer.content);
      if (question) this.keepInView(question);
      turn.wait = Math.max(RENDER_INTERVAL_MS, (performance.now() - start) / RENDER_SHARE);
    };
    let outcome = "done";
    let failure = null;
    try {
      if (!body.model) throw new Error("There is no model to ask yet: the server's list of models did not load.");
      await streamChat(body, controller.signal, {
        piece: (piece) => {
          const now = performance.now();
          if (turn.tFirst === null) {
            turn.tFirst = now;
            bubble.el.dataset.state = "streaming";
            this.setState("streaming");
            this.ttftEl.textContent = `first token ${fmtSeconds(now - turn.tSent)}`;
          }
          turn.tLast = now;
          turn.chunks += 1;
          answer.content += piece;
          if (turn.timer === null) turn.timer = setTimeout(draw, turn.wait);
          if (now - turn.shownAt >= STATS_INTERVAL_MS) {
            turn.shownAt = now;
            this.showSpeed(turn.chunks, turn);
          }
        },
        finish: (reason) => (turn.finish = reason),
        usage: (usage) => (turn.usage = usage),
      });
    } catch (err) {
      if (controller.signal.aborted) outcome = "stopped";
      else {
        outcome = "error";
        failure = err;
      }
    } finally {
      clearTimeout(turn.timer);
      turn.timer = null;
      this.controller = null;
    }
    draw();
    this.finish(outcome, failure, turn, answer, bubble, asked);
    this.setState("idle");
  }

  showSpeed(tokens, turn) {
    const rate = tokensPerSecond(tokens, turn);
    this.speedEl.textContent = rate === null ? "" : `${rate.toFixed(1)} tok/s`;
    return rate;
  }

  finish(outcome, failure, turn, answer, bubble, asked) {
    const c = this.conversation;
    const usage = turn.usage;
    const tokens = usage && Number.isFinite(usage.completion_tokens) ? usage.completion_tokens : turn.chunks;
    const rate = this.showSpeed(tokens, turn);
    const notes = [];
    if (turn.tFirst !== null) notes.push(`${tokens} tokens`);
    if (rate !== null) notes.push(`${rate.toFixed(1)} tok/s`);
    if (turn.tFirst !== null) notes.push(`first token ${fmtSeconds(turn.tFirst - turn.tSent)}`);
    if (usage) {
      const cached = usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens;
      this.usageEl.textContent =
        `prompt ${usage.prompt_tokens} tokens` +
        (Number.isFinite(cached) ? ` (${cached} cached)` : "") +
        `, answer ${usage.completion_tokens}`;
    }
    if (turn.finish === "length") notes.push("cut at max tokens");
    else if (turn.finish && turn.finish !== "stop") notes.push(`finish: ${turn.finish}`);
    if (outcome === "done" && answer.content === "") notes.push("empty answer");
    if (outcome === "stopped") notes.push("stopped");
    if (outcome === "error") notes.push("failed");
    answer.meta = notes.join(" · ");
    bubble.meta.textContent = answer.meta;
    if (turn.finish) bubble.el.dataset.finish = turn.finish;

    if (answer.content === "" && outcome !== "done") {
      // Nothing came back: the answer (and the question this turn added) leave the conversation, so that it keeps
      // alternating; they stay on screen, marked, and the question goes back to the box for another try.
      c.messages.pop();
      this.bubbles.pop();
      if (asked && c.messages[c.messages.length - 1] === asked) {
        c.messages.pop();
        const q = this.bubbles.pop();
        q.el.classList.add("withdrawn");
        q.actions.replaceChildren();
        q.meta.textContent = "not in the conversation";
        if (!this.input.value) this.input.value = asked.content;
        if (!this.pending.length) {
          this.pending = asked.images;
          this.showAttachments();
        }
      }
    }
    bubble.el.dataset.state = outcome; // a partial answer (stopped, or cut by an error) stays as it was shown
    this.bubbles.forEach((b) => b.actions.replaceChildren());
    this.bubbles.forEach((b, i) => this.offerActions(b, i));
    this.app.conversations.touch(c);
    this.refreshTitle();
    if (failure) {
      this.showError(failure);
      if (failure.status === 401) this.app.offerKey();
    }
  }
}
