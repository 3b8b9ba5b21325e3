// A conversation's settings as a request asks for them: the model, a system prompt and the sampler's options.
// Empty means the server's default. Each value is checked before anything is sent, in words a person can use.

const RANGES = {
  temperature: { name: "Temperature", field: "temperature", low: 0, high: 2, lowOpen: false },
  topP: { name: "Top-p", field: "top_p", low: 0, high: 1, lowOpen: true },
};

const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)$/; // as people write numbers: no exponents, no hexadecimal
const MAX_TOKENS = 2 ** 31 - 1;

// The request's fields for `settings`, or an Error naming the setting that is wrong.
export function requestFields(settings) {
  const fields = {};
  for (const [key, range] of Object.entries(RANGES)) {
    const text = settings[key].trim();
    if (!text) continue;
    const value = DECIMAL.test(text) ? Number(text) : NaN;
    const inRange = Number.isFinite(value) && (range.lowOpen ? value > range.low : value >= range.low) && value <= range.high;
    if (!inRange) {
      const from = range.lowOpen ? `above ${range.low}` : `from ${range.low}`;
      throw new Error(`${range.name} must be a number ${from} up to ${range.high}, or empty for the server's default.`);
    }
    fields[range.field] = value;
  }
  const max = settings.maxTokens.trim();
  if (max) {
    if (!/^\d+$/.test(max) || Number(max) < 1 || Number(max) > MAX_TOKENS) {
      throw new Error(`Max tokens must be a whole number from 1 to ${MAX_TOKENS}, or empty for the server's default.`);
    }
    fields.max_tokens = Number(max);
  }
  return fields;
}

// The API's messages for a conversation: the system prompt first, then each turn, images as content parts.
export function requestMessages(settings, messages) {
  const out = [];
  if (settings.system.trim()) out.push({ role: "system", content: settings.system });
  for (const m of messages) {
    if (m.role === "user" && m.images.length) {
      const parts = m.content ? [{ type: "text", text: m.content }] : [];
      for (const url of m.images) parts.push({ type: "image_url", image_url: { url } });
      out.push({ role: "user", content: parts });
    } else {
      out.push({ role: m.role, content: m.content });
    }
  }
  return out;
}
