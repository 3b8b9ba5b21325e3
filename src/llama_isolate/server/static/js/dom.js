// The page's one way to make a button: a type="button" (never a form's submit) with its class, text, hover text
// and click handler. Text goes in as text.
export function button(className, text, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  if (title) {
    b.title = title;
    if (text.length <= 2) b.setAttribute("aria-label", title); // a symbol: say what it does
  }
  if (onClick) b.addEventListener("click", onClick);
  return b;
}
