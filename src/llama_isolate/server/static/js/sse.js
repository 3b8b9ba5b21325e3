// A line-based reader of server-sent events: `data:` lines, joined with "\n", make one event at the blank line
// that ends it; comments (lines starting with ":"), other fields and CR/LF/CRLF line ends are handled. Text
// arrives in arbitrary pieces, so an incomplete last line (or a lone CR that may be half of a CRLF) waits for the
// next piece.
export class SseReader {
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
