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
  if (body && body.detail !== undefined) {
    return new ApiError(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail), res.status);
  }
  return new ApiError(text.trim().slice(0, 300) || res.statusText || "", res.status);
}

// What went wrong, for a person: { text, detail }, where detail is the technical message (shown on request).
export function explain(err) {
  if (err instanceof ApiError) {
    const detail = [err.status ? `HTTP ${err.status}` : "", err.message].filter(Boolean).join(": ");
    return { text: sentence(err), detail };
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
  const { status, code, message } = err;
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
  if (status === null) return `The answer was cut off: ${message}`;
  return `The server refused the request: ${message}`;
}

// The models GET v1/models lists: [{ id, images }], where images says whether its messages may hold images.
export async function listModels() {
  const res = await fetch("v1/models", { headers: headers() });
  if (!res.ok) throw await httpError(res);
  const body = await res.json();
  const data = body && Array.isArray(body.data) ? body.data : [];
  const models = data
    .filter((m) => m && typeof m.id === "string")
    .map((m) => ({ id: m.id, images: Array.isArray(m.input_modalities) && m.input_modalities.includes("image") }));
  if (!models.length) throw new ApiError("The server lists no model (GET v1/models).");
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
  let done = false;
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
      throw new ApiError(`an unreadable event from the server: ${data.slice(0, 200)}`);
    }
    if (chunk && chunk.error) {
      const e = chunk.error;
      throw new ApiError(typeof e.message === "string" ? e.message : JSON.stringify(e), null, e.code || null);
    }
    const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
    if (choice) {
      const piece = choice.delta && choice.delta.content;
      if (typeof piece === "string" && piece) on.piece(piece);
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
  if (!done) throw new ApiError("the stream ended before data: [DONE]");
}
