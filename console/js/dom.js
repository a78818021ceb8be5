// Small DOM helpers: build elements without innerHTML (no injection from API data), show
// status messages in live regions, and format times.

export function $(selector, root = document) {
  const node = root.querySelector(selector);
  if (!node) throw new Error(`missing element ${selector}`);
  return node;
}

/** el("td", {class: "num"}, "5,000") — attributes, then children (strings or nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/**
 * Show a message in a status region (an element with role=status that stays in the page, so
 * screen readers announce what is put into it): kind is "info", "success", "error" or
 * "pending". Errors are announced assertively.
 */
export function showStatus(region, kind, message, ...extra) {
  region.dataset.kind = kind;
  region.setAttribute("aria-live", kind === "error" ? "assertive" : "polite");
  region.replaceChildren(...(message ? [el("span", {}, message)] : []), ...extra);
}

export function clearStatus(region) {
  region.replaceChildren();
  delete region.dataset.kind;
}

/** An inline field error, tied to the field with aria-invalid and aria-describedby. */
export function setFieldError(input, errorNode, message) {
  if (message) {
    errorNode.textContent = message;
    errorNode.hidden = false;
    input.setAttribute("aria-invalid", "true");
  } else {
    errorNode.textContent = "";
    errorNode.hidden = true;
    input.removeAttribute("aria-invalid");
  }
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : dateTime.format(date);
}

export function timeElement(iso) {
  return el("time", { datetime: iso ?? false }, formatTime(iso));
}

export function clockTime(date) {
  return timeOnly.format(date);
}

/** "9 min 5 s" for a wait in seconds. */
export function formatDuration(seconds) {
  const minutes = Math.floor(seconds / 60);
  const rest = seconds % 60;
  if (minutes === 0) return `${rest} s`;
  return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
}

/** Busy state of a button while its request runs; returns a function that restores it. */
export function busy(button, label) {
  const original = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  if (label) button.textContent = label;
  return () => {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = original;
  };
}

/** Copy text, falling back to selecting it when the clipboard is not available. */
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    input?.focus();
    input?.select();
    return false;
  }
}
