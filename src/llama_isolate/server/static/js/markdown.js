// The model's markdown, rendered safely: markdown-it parses it with raw HTML off (markup in the text stays
// text), highlight.js colours fenced code in the languages it knows, and DOMPurify cleans what they made before it
// reaches the page, keeping only plain formatting and http(s)/mailto links. All come from the npm registry at
// build time (web/build.py) and are served by this server; without markdown-it and DOMPurify every answer is shown
// as plain text, and without highlight.js code is not coloured.
import { button } from "./dom.js";

let engine = null;

async function load() {
  try {
    const [{ default: markdownit }, { default: purify }, colour] = await Promise.all([
      import("../vendor/markdown-it.js"),
      import("../vendor/purify.js"),
      import("../vendor/highlight.js").then((m) => m.default, () => null), // optional: code is then plain
    ]);
    const md = markdownit({ html: false, linkify: true, typographer: false, highlight: colourer(colour) });
    md.disable(["image"]); // an image would be fetched from wherever the model says, on display
    purify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
    engine = { md, purify };
    return true;
  } catch (err) {
    console.warn("the markdown renderer is not installed (python web/build.py): answers show as plain text", err);
    return false;
  }
}

// markdown-it's `highlight` option: a fenced block's code as highlight.js's (escaped) markup, when the fence names
// a language it knows; "" leaves the block to markdown-it, which escapes it.
function colourer(hljs) {
  return (code, language) => {
    if (!hljs || !language || !hljs.getLanguage(language)) return "";
    try {
      return hljs.highlight(code, { language, ignoreIllegals: true }).value;
    } catch {
      return "";
    }
  };
}

export const ready = load();

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "svg", "math"],
  FORBID_ATTR: ["style", "id", "name"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
};

// Shows `text` in `el`: as markdown when the renderer is there, else as text.
export function render(el, text) {
  if (!engine) {
    el.textContent = text;
    el.classList.add("plain");
    return;
  }
  el.replaceChildren(engine.purify.sanitize(engine.md.render(text), PURIFY));
  for (const pre of el.querySelectorAll("pre")) decorate(pre);
}

// A code block gets its language (when the fence named one) and a copy button.
function decorate(pre) {
  const code = pre.querySelector("code");
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const language = code && /(?:^|\s)language-(\S+)/.exec(code.className);
  const name = document.createElement("span");
  name.textContent = language ? language[1] : "";
  const copy = button("copy", "Copy", "Copy this code", async () => {
    const ok = await copyText((code || pre).textContent);
    copy.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => {
      copy.textContent = "Copy";
    }, 1500);
  });
  bar.append(name, copy);
  const box = document.createElement("div");
  box.className = "code";
  pre.replaceWith(box);
  box.append(bar, pre);
}

export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      /* refused: try the old way */
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}
