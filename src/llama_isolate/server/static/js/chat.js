// The chat page: two independent conversations against the OpenAI-style API of the same server.
// Vanilla JS, no build step, no external resources. All URLs are relative to the page, so the page
// also works when the app is mounted under a prefix. Model text only ever reaches the DOM as text
// (textContent / text nodes), never as HTML.
"use strict";

(() => {
  const KEY_STORE = "llama-isolate.api-key";
  const MAX_TOKENS_STORE = "llama-isolate.max-tokens";
  const STATS_INTERVAL_MS = 250; // live figures change at most this often, so they stay readable

  const modelEl = document.querySelector('[data-testid="model"]');
  const statusEl = document.getElementById("status");
  const keyForm = document.getElementById("key-form");
  const keyInput = document.getElementById("api-key");
  const maxTokensInput = document.getElementById("max-tokens");

  // localStorage throws in some contexts (storage disabled, opaque origins); the page works without it.
  const store = {
    get(name) {
      try {
        return localStorage.getItem(name) || "";
      } catch {
        return "";
      }
    },
    set(name, value) {
      try {
        if (value) localStorage.setItem(name, value);
        else localStorage.removeItem(name);
      } catch {
        /* not persisted: the value still applies to this page */
      }
    },
  };
  let apiKey = store.get(KEY_STORE);

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    return h;
  }

  // An error from the API: the message to show and, for HTTP errors, the status.
  class ApiError extends Error {
    constructor(message, status = null, detail = null) {
      super(message);
      this.status = status;
      this.detail = detail;
    }
  }

  // Reads a non-2xx response: OpenAI's {"error": {"message", "type", "param", "code"}}, or whatever else
  // came back (a proxy's HTML page, FastAPI's {"detail": ...}), so that the user always sees something.
  async function httpError(res) {
    const status = `HTTP ${res.status}`;
    let text = "";
    try {
      text = await res.text();
    } catch {
      /* the body is gone; the status alone will do */
    }
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    const error = body && body.error;
    if (error && typeof error.message === "string") return new ApiError(`${status}: ${error.message}`, res.status, error);
    if (typeof error === "string") return new ApiError(`${status}: ${error}`, res.status);
    if (body && body.detail !== undefined) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      return new ApiError(`${status}: ${detail}`, res.status);
    }
    const snippet = text.trim().slice(0, 300);
    if (snippet) return new ApiError(`${status}: ${snippet}`, res.status);
    return new ApiError(res.statusText ? `${status} ${res.statusText}` : status, res.status);
  }

  function describe(err) {
    if (err instanceof ApiError) return err.message;
    if (err instanceof TypeError) return `Could not reach the server (${err.message})`; // fetch's network failure
    return String((err && err.message) || err);
  }

  function offerKey() {
    keyForm.hidden = false;
    keyInput.value = apiKey;
  }

  // --- the model -------------------------------------------------------------------------------
  // Every request names the first model GET v1/models lists. Fetched at load, and again on the next
  // send when that failed (say with 401 before a key was entered).
  let modelId = null;
  let modelPending = null;

  function ensureModel() {
    if (modelId) return Promise.resolve(modelId);
    if (!modelPending) {
      modelPending = (async () => {
        const res = await fetch("v1/models", { headers: headers() });
        if (!res.ok) throw await httpError(res);
        const body = await res.json();
        const first = body && Array.isArray(body.data) ? body.data[0] : null;
        if (!first || typeof first.id !== "string") throw new ApiError("The server lists no model (GET v1/models)");
        modelId = first.id;
        modelEl.textContent = modelId.split("/").pop() || modelId; // a path's file name; the full id on hover
        modelEl.title = modelId;
        statusEl.textContent = "";
        return modelId;
      })().finally(() => {
        modelPending = null;
      });
    }
    return modelPending;
  }

  function loadModel() {
    modelEl.textContent = "loading…";
    ensureModel().catch((err) => {
      modelEl.textContent = "no model";
      statusEl.textContent = describe(err);
      if (err.status === 401) offerKey();
    });
  }

  // --- settings ----------------------------------------------------------------------------------
  const storedMax = store.get(MAX_TOKENS_STORE);
  if (/^\d+$/.test(storedMax) && Number(storedMax) > 0) maxTokensInput.value = storedMax;
  maxTokensInput.addEventListener("change", () => store.set(MAX_TOKENS_STORE, maxTokensInput.value.trim()));

  function maxTokens() {
    const text = maxTokensInput.value.trim();
    const n = Number(text);
    if (!/^\d+$/.test(text) || n < 1) throw new ApiError("max tokens must be a whole number of at least 1");
    return n;
  }

  if (apiKey) offerKey(); // a stored key stays visible, so that it can be changed or cleared
  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = keyInput.value.trim();
    store.set(KEY_STORE, apiKey);
    modelId = null;
    loadModel();
  });

  // --- server-sent events ------------------------------------------------------------------------
  // A line-based reader of the SSE format: `data:` lines, concatenated with "\n", make one event at
  // the blank line that ends it; comments (lines starting with ":"), other fields and CR/LF/CRLF line
  // ends are handled. Text arrives in arbitrary pieces, so an incomplete last line (or a lone CR that
  // may be half of a CRLF) waits for the next piece.
  class SseReader {
    constructor(onData) {
      this.onData = onData;
      this.pending = "";
      this.data = [];
    }

    push(text, final = false) {
      this.pending += text;
      const ends = /\r\n|\r|\n/g;
      let start = 0;
      let m;
      while ((m = ends.exec(this.pending)) !== null) {
        if (m[0] === "\r" && m.index === this.pending.length - 1 && !final) break;
        const line = this.pending.slice(start, m.index);
        start = ends.lastIndex;
        this.line(line);
      }
      this.pending = this.pending.slice(start);
    }

    end() {
      this.push("", true);
      if (this.pending) this.line(this.pending);
      this.pending = "";
      this.line(""); // a last event without its blank line still counts
    }

    line(line) {
      if (line === "") {
        if (this.data.length) {
          const data = this.data.join("\n");
          this.data = [];
          this.onData(data);
        }
        return;
      }
      if (line.startsWith(":")) return;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
    }
  }

  // --- a conversation pane -----------------------------------------------------------------------
  const template = document.getElementById("pane-template");

  function fmtSeconds(ms) {
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  // Decode speed: the tokens after the first over the time after the first. The wait for the first
  // token (queue, prompt processing) is the time to first token, shown on its own.
  function tokensPerSecond(tokens, turn) {
    if (turn.tFirst === null || tokens < 2 || turn.tLast <= turn.tFirst) return null;
    return (tokens - 1) / ((turn.tLast - turn.tFirst) / 1000);
  }

  class Pane {
    constructor(index) {
      const root = template.content.firstElementChild.cloneNode(true);
      const part = (selector, name) => {
        const el = root.querySelector(selector);
        el.dataset.testid = `${name}-${index}`;
        return el;
      };
      root.dataset.testid = `pane-${index}`;
      root.setAttribute("aria-label", `Conversation ${index + 1}`);
      this.root = root;
      this.transcript = part(".transcript", "transcript");
      this.ttftEl = part(".ttft", "ttft");
      this.speedEl = part(".speed", "speed");
      this.usageEl = part(".usage", "usage");
      this.errorEl = part(".error", "error");
      this.form = part(".compose", "compose");
      this.input = part("textarea", "input");
      this.sendButton = part(".send", "send");
      this.stopButton = part(".stop", "stop");
      this.clearButton = part(".clear", "clear");
      this.messages = []; // the whole history, sent on every turn: the API keeps no state
      this.controller = null; // the running request's AbortController

      this.form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.send();
      });
      this.input.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this.send();
        } else if (event.key === "Escape" && this.controller) {
          this.stop();
        }
      });
      this.stopButton.addEventListener("click", () => this.stop());
      this.clearButton.addEventListener("click", () => this.clear());
    }

    setState(state) {
      this.root.dataset.state = state; // idle | waiting | streaming
      const busy = state !== "idle";
      this.sendButton.disabled = busy;
      this.stopButton.disabled = !busy;
      this.clearButton.disabled = busy;
    }

    showError(message) {
      this.errorEl.textContent = message;
      this.errorEl.hidden = !message;
    }

    bubble(role, text) {
      const el = document.createElement("div");
      el.className = `msg ${role}`;
      const label = document.createElement("div");
      label.className = "role";
      label.textContent = role === "user" ? "You" : "Model";
      const body = document.createElement("div");
      body.className = "text";
      const node = document.createTextNode(text);
      body.appendChild(node);
      const meta = document.createElement("div");
      meta.className = "meta";
      el.append(label, body, meta);
      this.transcript.appendChild(el);
      this.transcript.scrollTop = this.transcript.scrollHeight;
      return { el, node, meta };
    }

    nearBottom() {
      const t = this.transcript;
      return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
    }

    clear() {
      if (this.controller) return;
      this.messages = [];
      this.transcript.replaceChildren();
      this.ttftEl.textContent = "";
      this.speedEl.textContent = "";
      this.usageEl.textContent = "";
      this.showError("");
    }

    stop() {
      if (this.controller) this.controller.abort(); // drops the connection; the server then cancels the work
    }

    async send() {
      if (this.controller) return;
      const text = this.input.value.trim();
      if (!text) return;
      let limit;
      try {
        limit = maxTokens();
      } catch (err) {
        this.showError(describe(err));
        return;
      }
      this.input.value = "";
      this.showError("");
      this.messages.push({ role: "user", content: text });
      const question = this.bubble("user", text);
      const answer = this.bubble("assistant", "");
      answer.el.dataset.state = "waiting";
      const controller = new AbortController();
      this.controller = controller;
      this.setState("waiting");
      this.ttftEl.textContent = "";
      this.speedEl.textContent = "";
      this.usageEl.textContent = "";
      const turn = {
        text: "",
        chunks: 0,
        usage: null,
        finish: null,
        done: false,
        tSent: null,
        tFirst: null,
        tLast: null,
        shownAt: 0,
      };
      let outcome = "done";
      let failure = null;
      try {
        const model = await ensureModel();
        if (controller.signal.aborted) throw new DOMException("stopped", "AbortError");
        turn.tSent = performance.now();
        const res = await fetch("v1/chat/completions", {
          method: "POST",
          headers: headers(),
          body: JSON.stringify({
            model,
            messages: this.messages,
            stream: true,
            stream_options: { include_usage: true },
            max_tokens: limit,
          }),
          signal: controller.signal,
        });
        if (!res.ok) throw await httpError(res);
        await this.read(res, turn, answer);
      } catch (err) {
        if (controller.signal.aborted) {
          outcome = "stopped";
        } else {
          outcome = "error";
          failure = err;
        }
      } finally {
        this.controller = null;
        this.setState("idle");
      }
      this.finish(outcome, failure, turn, question, answer, text);
    }

    // Reads the body of a streaming answer until `data: [DONE]`.
    async read(res, turn, answer) {
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const sse = new SseReader((data) => this.event(data, turn, answer));
      let finished = false;
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) {
            sse.push(decoder.decode());
            sse.end();
            finished = true;
            break;
          }
          sse.push(decoder.decode(value, { stream: true }));
          if (turn.done) break;
        }
      } finally {
        // After [DONE], or when an event was bad: let go of the body (this also drops the connection).
        if (!finished) reader.cancel().catch(() => {});
      }
      if (!turn.done) throw new ApiError("The stream ended before data: [DONE]");
    }

    // One SSE event: a chat.completion.chunk, the closing [DONE], or {"error": {...}}.
    event(data, turn, answer) {
      if (turn.done) return;
      if (data === "[DONE]") {
        turn.done = true;
        return;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new ApiError(`Unreadable event from the server: ${data.slice(0, 200)}`);
      }
      if (chunk && chunk.error) {
        const e = chunk.error;
        throw new ApiError(typeof e.message === "string" ? e.message : JSON.stringify(e), null, e);
      }
      const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
      if (choice) {
        const piece = choice.delta && choice.delta.content;
        if (typeof piece === "string" && piece) {
          const now = performance.now();
          if (turn.tFirst === null) {
            turn.tFirst = now;
            answer.el.dataset.state = "streaming";
            this.setState("streaming");
            this.ttftEl.textContent = `first token ${fmtSeconds(now - turn.tSent)}`;
          }
          turn.tLast = now;
          turn.chunks += 1;
          turn.text += piece;
          const follow = this.nearBottom();
          answer.node.appendData(piece);
          if (follow) this.transcript.scrollTop = this.transcript.scrollHeight;
          if (now - turn.shownAt >= STATS_INTERVAL_MS) {
            turn.shownAt = now;
            this.showSpeed(turn.chunks, turn);
          }
        }
        if (choice.finish_reason) turn.finish = choice.finish_reason;
      }
      if (chunk && chunk.usage) turn.usage = chunk.usage;
    }

    showSpeed(tokens, turn) {
      const rate = tokensPerSecond(tokens, turn);
      this.speedEl.textContent = rate === null ? "" : `${rate.toFixed(1)} tok/s`;
      return rate;
    }

    finish(outcome, failure, turn, question, answer, text) {
      answer.el.dataset.state = outcome;
      if (turn.finish) answer.el.dataset.finish = turn.finish;
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
      if (outcome === "done" && turn.text === "") notes.push("empty answer");
      if (outcome === "stopped") notes.push("stopped");
      if (outcome === "error") notes.push("failed");
      answer.meta.textContent = notes.join(" · ");

      if (turn.text === "" && outcome !== "done") {
        // Nothing came back: withdraw the question from the history, so that the conversation keeps
        // alternating, and give its text back for another try.
        this.messages.pop();
        question.el.classList.add("withdrawn");
        question.meta.textContent = "not in the conversation";
        if (!this.input.value) this.input.value = text;
      } else {
        // A partial answer (stopped, or cut by an error) stays in the history as it was shown.
        this.messages.push({ role: "assistant", content: turn.text });
      }
      if (failure) {
        this.showError(describe(failure));
        if (failure.status === 401) offerKey();
      }
    }
  }

  const panesEl = document.getElementById("panes");
  const panes = [0, 1].map((i) => new Pane(i));
  for (const pane of panes) {
    pane.setState("idle");
    panesEl.appendChild(pane.root);
  }
  loadModel();
})();
