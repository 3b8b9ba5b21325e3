// One turn: the answer to a conversation's last question, streamed into its bubble, with its live figures (time
// to first token, tokens per second) and, at the end, the line under the answer and the server's token counts.
import { streamChat } from "./api.js";

const STATS_INTERVAL_MS = 250; // live figures change at most this often, so they stay readable
// While it streams, an answer is redrawn (parsed as markdown again) at most every 40 ms, and never more than a
// fifth of the time: a long answer, slower to draw, is redrawn less often, so that the page stays responsive.
const RENDER_INTERVAL_MS = 40;
const RENDER_SHARE = 0.2;

function fmtSeconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export class Turn {
  // `figures`: the pane's { ttft, speed, usage } elements; `onFirst()` at the first token; `onDraw()` after each
  // redraw of the answer.
  constructor(answer, bubble, figures, { onFirst, onDraw }) {
    this.answer = answer;
    this.bubble = bubble;
    this.figures = figures;
    this.onFirst = onFirst;
    this.onDraw = onDraw;
    this.chunks = 0;
    this.usage = null;
    this.finishReason = null;
    this.tSent = performance.now();
    this.tFirst = null;
    this.tLast = null;
    this.shownAt = 0;
    this.timer = null;
    this.wait = RENDER_INTERVAL_MS;
    for (const el of Object.values(figures)) el.textContent = "";
  }

  // Streams the answer; resolves to "done", "stopped" (the signal) or "error" (then `this.failure` says why).
  async stream(body, signal) {
    let outcome = "done";
    try {
      await streamChat(body, signal, {
        piece: (piece) => this.piece(piece),
        finish: (reason) => (this.finishReason = reason),
        usage: (usage) => (this.usage = usage),
      });
    } catch (err) {
      outcome = signal.aborted ? "stopped" : "error";
      this.failure = outcome === "error" ? err : null;
    } finally {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.draw();
    return outcome;
  }

  piece(piece) {
    const now = performance.now();
    if (this.tFirst === null) {
      this.tFirst = now;
      this.figures.ttft.textContent = `first token ${fmtSeconds(now - this.tSent)}`;
      this.onFirst();
    }
    this.tLast = now;
    this.chunks += 1;
    this.answer.content += piece;
    if (this.timer === null) this.timer = setTimeout(() => this.draw(), this.wait);
    if (now - this.shownAt >= STATS_INTERVAL_MS) {
      this.shownAt = now;
      this.showSpeed(this.chunks);
    }
  }

  draw() {
    this.timer = null;
    const start = performance.now();
    this.bubble.showText(this.answer.content);
    this.onDraw();
    this.wait = Math.max(RENDER_INTERVAL_MS, (performance.now() - start) / RENDER_SHARE);
  }

  // Decode speed: the tokens after the first over the time after the first. The wait for the first token (queue,
  // prompt processing) is the time to first token, shown on its own.
  showSpeed(tokens) {
    const ok = this.tFirst !== null && tokens >= 2 && this.tLast > this.tFirst;
    const rate = ok ? (tokens - 1) / ((this.tLast - this.tFirst) / 1000) : null;
    this.figures.speed.textContent = rate === null ? "" : `${rate.toFixed(1)} tok/s`;
    return rate;
  }

  // The line under the answer, and the server's counts beside the figures.
  notes(outcome) {
    const usage = this.usage;
    const tokens = usage && Number.isFinite(usage.completion_tokens) ? usage.completion_tokens : this.chunks;
    const rate = this.showSpeed(tokens);
    const notes = [];
    if (this.tFirst !== null) notes.push(`${tokens} tokens`);
    if (rate !== null) notes.push(`${rate.toFixed(1)} tok/s`);
    if (this.tFirst !== null) notes.push(`first token ${fmtSeconds(this.tFirst - this.tSent)}`);
    if (usage) {
      const cached = usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens;
      this.figures.usage.textContent =
        `prompt ${usage.prompt_tokens} tokens` +
        (Number.isFinite(cached) ? ` (${cached} cached)` : "") +
        `, answer ${usage.completion_tokens}`;
    }
    if (this.finishReason === "length") notes.push("cut at max tokens");
    else if (this.finishReason && this.finishReason !== "stop") notes.push(`finish: ${this.finishReason}`);
    if (outcome === "done" && this.answer.content === "") notes.push("empty answer");
    if (outcome === "stopped") notes.push("stopped");
    if (outcome === "error") notes.push("failed");
    return notes.join(" · ");
  }
}
