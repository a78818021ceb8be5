// History: the user's top-up orders (GET /topups) and ledger (GET /ledger), as tabs.

import { $, el, timeElement } from "./dom.js";
import { signedQuota } from "./format.js";
import { formatMoney, formatQuota } from "./money.js";
import { cell, pagedTable } from "./paged.js";
import { methodLabel } from "./topup.js";

const KIND_LABELS = {
  topup: "Top-up",
  redeem: "Redemption code",
  referral_reward: "Referral reward",
  referral_transfer: "Reward transfer",
  usage: "Usage",
  refund: "Refund",
  reversal: "Reversal",
  adjustment: "Adjustment",
  signup_bonus: "Sign-up bonus",
  expiry: "Expired grant",
};
const BALANCE_LABELS = { quota: "Balance", aff_quota: "Reward" };

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}` }, status.charAt(0).toUpperCase() + status.slice(1));
}

function orderRow(order, options) {
  return el("tr", {},
    cell(timeElement(order.created_at)),
    cell(el("code", { title: order.order_id }, order.order_id)),
    cell(methodLabel(order, options)),
    cell(order.product_id ?? formatQuota(order.amount), "num"),
    cell(formatMoney(order.pay_money, order.currency), "num"),
    cell(formatQuota(order.quota), "num"),
    cell(statusBadge(order.status)),
  );
}

function ledgerRow(entry) {
  const negative = BigInt(entry.delta) < 0n;
  return el("tr", {},
    cell(timeElement(entry.created_at)),
    cell(KIND_LABELS[entry.kind] ?? entry.kind),
    cell(BALANCE_LABELS[entry.balance] ?? entry.balance),
    cell(signedQuota(entry.delta), negative ? "num negative" : "num positive"),
    cell(formatQuota(entry.balance_after), "num"),
    cell(entry.ref ? el("code", {}, entry.ref) : "—"),
    cell(grantEffects(entry)),
  );
}

/** The entry's per-grant effects, shown on demand (a disclosure). */
function grantEffects(entry) {
  const parts = Object.entries(entry.grants ?? {});
  if (parts.length === 0) return "—";
  return el("details", { class: "grant-effects" },
    el("summary", {}, parts.length === 1 ? "1 grant" : `${parts.length} grants`),
    el("ul", {}, ...parts.map(([grantId, delta]) =>
      el("li", {}, el("code", {}, grantId), " ", signedQuota(delta)))),
  );
}

/** WAI-ARIA tabs: click or arrow keys switch; only the selected tab is in the tab order. */
function setupTabs(tablist) {
  const tabs = [...tablist.querySelectorAll('[role="tab"]')];
  function select(tab, focus) {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
    }
    if (focus) tab.focus();
  }
  tablist.addEventListener("click", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab) select(tab, false);
  });
  tablist.addEventListener("keydown", (event) => {
    const index = tabs.indexOf(document.activeElement);
    if (index < 0) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -index, End: tabs.length - 1 - index };
    if (!(event.key in moves)) return;
    event.preventDefault();
    select(tabs[(index + moves[event.key] + tabs.length) % tabs.length], true);
  });
}

export function setupHistory(ctx) {
  const orders = pagedTable({
    load: (cursor) => ctx.api.listTopups(cursor),
    body: $("#orders-body"),
    more: $("#orders-more"),
    empty: $("#orders-empty"),
    status: $("#orders-status"),
    row: (order) => orderRow(order, ctx.state.options),
  });
  const ledger = pagedTable({
    load: (cursor) => ctx.api.listLedger(cursor),
    body: $("#ledger-body"),
    more: $("#ledger-more"),
    empty: $("#ledger-empty"),
    status: $("#ledger-status"),
    row: ledgerRow,
  });
  setupTabs($("#history-tabs"));
  const reload = () => Promise.all([orders.reload(), ledger.reload()]);
  $("#history-refresh").addEventListener("click", reload);
  return { reload };
}
