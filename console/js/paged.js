// A table fed by a cursor-paginated list ({items, next_cursor}): first page on reload(),
// "Load more" appends the next one. Lists are read from indexes that lag behind a write by
// a moment (DynamoDB GSIs), so after a change reloadUntil() reloads until the first page
// shows it (a few tries, then it shows what the list says).

import { busy, clearStatus, el, showStatus } from "./dom.js";

export function pagedTable({ load, body, more, empty, status, row }) {
  let cursor = null;
  let generation = 0;
  let firstPage = [];

  async function fetchPage(append) {
    const mine = ++generation;
    clearStatus(status);
    const restore = append ? busy(more, "Loading…") : () => {};
    try {
      const page = await load(append ? cursor : undefined);
      if (mine !== generation) return; // a newer reload superseded this one
      const rows = page.items.map(row);
      if (!append) firstPage = page.items;
      if (append) body.append(...rows);
      else body.replaceChildren(...rows);
      cursor = page.next_cursor ?? null;
      more.hidden = cursor === null;
      empty.hidden = body.children.length > 0;
    } catch (error) {
      if (mine === generation) showStatus(status, "error", error.message);
    } finally {
      restore();
    }
  }

  more.addEventListener("click", () => fetchPage(true));
  async function reloadUntil(shows, { tries = 8, pauseMs = 400 } = {}) {
    for (let attempt = 1; ; attempt += 1) {
      await fetchPage(false);
      if (shows(firstPage) || attempt >= tries) return;
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  }

  return { reload: () => fetchPage(false), reloadUntil };
}

export function cell(content, className) {
  return el("td", { class: className }, content);
}
