// Talking to the server's OpenAI-style API: the key, the model list, a streamed chat answer, and errors turned
// into sentences a person can act on (the server's own message is kept as the detail). All URLs are relative to
// the page, so the page also works when the app is mounted under a prefix.
import { SseReader } from "./sse.js";

const KEY_STORE = "llama-isolate.api-key";

// localStorage throws in some contexts (storage disabled, opaque origins); the page works without it.
export const settingsStore = {
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
      return true;
    } catch {
      return false; // not persisted: the value still applies to this page
    }
  },
};

let apiKey = settingsStore.get(KEY_STORE);

export function getKey() {
  return apiKey;
}

export function setKey(key) {
  apiKey = key;
  settingsStore.set(KEY_STORE, key);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

// An error from the API: the server's message, the HTTP status (null for one inside a stream) and OpenAI's code.
export class ApiError extends Error {
  constructor(message, status = null, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Reads a non-2xx response: OpenAI's {"error": {"message", "type", "param", "code"}}, or whatever else came back
// (a proxy's HTML page, FastAPI's {"detail": ...}), so that there is always something to show.
async function httpError(res) {
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
  if (error && typeof error.message === "string") {
    return new ApiError(error.message, res.status, typeof error.code === "string" ? error.code : null);
  }
  if (typeof error === "string") return new ApiError(error, res.status);
  if (error && typeof error === "object") return new ApiError(JSON.stringify(error), res.status);
  if (body && body.detail !== undefined) return new ApiError(detailText(body.detail), res.status);
  if (/^\s*</.test(text)) {
    const title = /<title[^>]*>([^<]*)<\/title>/i.exec(text);
    return new ApiError(`a web page${title ? ` titled "${title[1].trim()}"` : ""}, not the API's JSON`, res.status, "web_page");
  }
  return new ApiError(text.trim().slice(0, 300) || res.statusText || "", res.status);
}

// FastAPI's {"detail": ...}: a sentence, or a list of {loc, msg} (a validation error).
function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => (d && typeof d.msg === "string" ? `${Array.isArray(d.loc) ? `${d.loc.join(".")}: ` : ""}${d.msg}` : JSON.stringify(d)))
      .join("; ");
  }
  return JSON.stringify(detail);
}

function clip(text, length) {
  return text.length > length ? `${text.slice(0, length)}… (${text.length} characters in all)` : text;
}

// What went wrong, for a person: { text, detail }, where detail is the technical message (shown on request).
export function explain(err) {
  if (err instanceof ApiError) {
    const detail = [err.status ? `HTTP ${err.status}` : "", err.message].filter(Boolean).join(": ");
    return { text: sentence(err), detail: clip(detail, 2000) };
  }
  if (err instanceof TypeError) {
    // fetch's network failure
    return {
      text: "Could not reach the server. Check that it is still running, then try again.",
      detail: err.message,
    };
  }
  return { text: String((err && err.message) || err), detail: "" };
}

function sentence(err) {
  const { status, code } = err;
  const message = clip(err.message, 300);
  if (status === 401 || code === "invalid_api_key") {
    return /wrong/.test(message)
      ? "The server did not accept this API key. Check it, then save it again."
      : "This server asks for an API key. Enter it in the field at the top.";
  }
  if (code === "context_length_exceeded") {
    const holds = /context holds (\d+)|the (\d+) tokens the context/.exec(message);
    const size = holds ? ` (it reads at most ${holds[1] || holds[2]} tokens at once)` : "";
    return (
      `This conversation is too long for the model${size}. Start a new conversation, edit an earlier ` +
      "question, or lower the answer's max tokens."
    );
  }
  if (code === "images_not_supported") return "This model cannot read images. Pick another model, or send text only.";
  if (code === "invalid_image") return "The server could not read that image. Try a PNG or JPEG file.";
  if (code === "model_not_found") return "That model is not on this server any more. Pick another in the list.";
  if (code === "queue_full" || status === 429) return "The server is busy with other requests. Try again in a moment.";
  if (code === "model_not_ready") return "The model is still loading. Try again in a moment.";
  if (status === 413) return "The message is too large for the server. Try a smaller image, or fewer of them.";
  if (status === 408) return "The server gave up waiting for the message. Check your connection, then try again.";
  if (status && status >= 500) return "The server could not answer this time. Try again; if it keeps failing, check its log.";
  if (code === "web_page") {
    return `The server answered with a web page instead of the API (HTTP ${status}). Is something in between refusing the request?`;
  }
  if (code === "unreadable_models") return "The server's list of models could not be read. Is this an OpenAI-style API?";
  if (code === "no_models") return "The server serves no model.";
  if (code === "not_a_stream") return "The server answered in a form this page cannot read (not a stream of events).";
  if (code === "stream_ended") {
    return err.partial
      ? "The answer was cut off: the connection closed before it ended."
      : "The server closed the connection before answering. Try again.";
  }
  if (status === null) return err.partial ? `The answer was cut off: ${message}` : `The server could not answer: ${message}`;
  return `The server refused the request: ${message}`;
}

// The models GET v1/models lists: [{ id, images }], where images says whether its messages may hold images.
export async function listModels() {
  const res = await fetch("v1/models", { headers: headers() });
  if (!res.ok) throw await httpError(res);
  let body = null;
  try {
    body = await res.json();
  } catch (err) {
    throw new ApiError(`GET v1/models: ${err.message}`, res.status, "unreadable_models");
  }
  const data = body && Array.isArray(body.data) ? body.data : [];
  const models = data
    .filter((m) => m && typeof m.id === "string")
    .map((m) => ({ id: m.id, images: Array.isArray(m.input_modalities) && m.input_modalities.includes("image") }));
  if (!models.length) throw new ApiError("GET v1/models lists no model", res.status, "no_models");
  return models;
}

// Streams one chat answer. `on.piece(text)` for each piece of content, `on.finish(reason)`, `on.usage(usage)`.
// Resolves at `data: [DONE]`; rejects with ApiError (refused, or an error event mid-stream), TypeError (network)
// or the AbortError of `signal`.
export async function streamChat(body, signal, on) {
  const res = await fetch("v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!res.ok) throw await httpError(res);
  const type = res.headers.get("content-type") || "";
  if (!type.startsWith("text/event-stream")) {
    throw new ApiError(`a ${res.status} answer of type "${type}", not text/event-stream`, res.status, "not_a_stream");
  }
  let done = false;
  let received = false;
  // An error of the stream itself; `partial` says whether some of the answer had come.
  const broken = (message, code = null) => Object.assign(new ApiError(message, null, code), { partial: received });
  const event = (data) => {
    if (done) return;
    if (data === "[DONE]") {
      done = true;
      return;
    }
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      throw broken(`an unreadable event from the server: ${data.slice(0, 200)}`);
    }
    if (chunk && chunk.error) {
      const e = chunk.error;
      const text = typeof e === "string" ? e : typeof e.message === "string" ? e.message : JSON.stringify(e);
      throw broken(text, typeof e.code === "string" ? e.code : null);
    }
    const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
    if (choice) {
      const piece = choice.delta && choice.delta.content;
      if (typeof piece === "string" && piece) {
        received = true;
        on.piece(piece);
      }
      if (choice.finish_reason) on.finish(choice.finish_reason);
    }
    if (chunk && chunk.usage) on.usage(chunk.usage);
  };
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const sse = new SseReader(event);
  let finished = false;
  try {
    for (;;) {
      const { value, done: ended } = await reader.read();
      if (ended) {
        sse.push(decoder.decode());
        sse.end();
        finished = true;
        break;
      }
      sse.push(decoder.decode(value, { stream: true }));
      if (done) break;
    }
  } finally {
    // After [DONE], or when an event was bad: let go of the body (this also drops the connection).
    if (!finished) reader.cancel().catch(() => {});
  }
  if (!done) {
    throw broken("the stream ended before data: [DONE]", "stream_ended");
  }
}
