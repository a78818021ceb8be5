// Back from the provider's page (?order=<id>): poll GET /topups/{id} with a visible state
// until the order is no longer pending, then refresh the balance.

import { $, clockTime, el, showStatus, timeElement } from "./dom.js";
import { formatMoney, formatQuota } from "./money.js";
import { methodLabel } from "./topup.js";

const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 5000;
const GIVE_UP_AFTER_MS = 3 * 60 * 1000;

const STATES = {
  pending: { kind: "pending", label: "Pending", text: "Waiting for the payment to be confirmed…" },
  paid: { kind: "success", label: "Paid", text: "The quota was added to your balance." },
  failed: { kind: "error", label: "Failed", text: "The payment failed. Nothing was charged to your balance." },
  expired: { kind: "error", label: "Expired", text: "The order expired without a payment." },
  refunded: { kind: "info", label: "Refunded", text: "The payment was refunded and its quota taken back." },
  disputed: { kind: "error", label: "Under review", text: "The payment did not match the order and is being reviewed. Contact support if you were charged." },
};

function orderFromUrl() {
  const params = new URLSearchParams(window.location.search);
  return { orderId: params.get("order"), cancelled: params.get("cancelled") === "1" };
}

function detailRow(term, value) {
  return el("div", { class: "summary-row" }, el("dt", {}, term), el("dd", {}, value));
}

function renderDetails(node, order, options) {
  node.replaceChildren(
    detailRow("Order", el("code", {}, order.order_id)),
    detailRow("Method", methodLabel(order, options)),
    detailRow("Quota", `${formatQuota(order.quota)} quota`),
    detailRow(order.status === "paid" ? "Paid" : "To pay", formatMoney(order.pay_money, order.currency)),
    detailRow("Created", timeElement(order.created_at)),
    order.paid_at ? detailRow("Paid at", timeElement(order.paid_at)) : null,
  );
}

function stateMessage(order, cancelled) {
  const state = STATES[order.status] ?? { kind: "info", label: order.status, text: "" };
  let { text } = state;
  if (order.status === "paid") text = `${formatQuota(order.quota)} quota added to your balance.`;
  if (order.status === "pending" && cancelled) {
    text = "You left the payment page without paying. If you did pay, this updates once the payment is confirmed.";
  }
  return { ...state, text };
}

export function setupOrderTracking(ctx) {
  const card = $("#order-card");
  const status = $("#order-status");
  const details = $("#order-details");
  const recheck = $("#order-recheck");
  const dismiss = $("#order-dismiss");
  let timer = null;
  let tracked = null;

  function show(order, cancelled) {
    const state = stateMessage(order, cancelled);
    card.dataset.state = order.status;
    showStatus(status, state.kind, "", el("strong", { class: "state-label" }, state.label), " ", state.text);
    renderDetails(details, order, ctx.state.options);
  }

  function cleanUrl() {
    // The provider may append its own parameters to the return URL; none are needed now.
    window.history.replaceState(null, "", window.location.pathname);
  }

  async function poll(delay, startedAt) {
    timer = null;
    let order;
    try {
      order = await ctx.api.getTopup(tracked.orderId);
    } catch (error) {
      if (error.status === 404 || error.status === 400) {
        card.dataset.state = "missing";
        showStatus(status, "error", "This order was not found for your account.");
        cleanUrl();
        return;
      }
      if (error.status === 401) return;
      showStatus(status, "pending", `Could not check the order (${error.message}) — retrying…`);
    }
    if (order) {
      show(order, tracked.cancelled);
      if (order.status !== "pending") {
        recheck.hidden = true;
        cleanUrl();
        await ctx.afterChange();
        return;
      }
    }
    if (Date.now() - startedAt > GIVE_UP_AFTER_MS) {
      recheck.hidden = false;
      showStatus(status, "pending", "",
        el("strong", { class: "state-label" }, "Pending"),
        ` Still waiting for the confirmation (last checked ${clockTime(new Date())}). It can take a few minutes; check again later.`);
      return;
    }
    timer = setTimeout(() => poll(Math.min(delay * 1.5, MAX_DELAY_MS), startedAt), delay);
  }

  function track(orderId, cancelled) {
    if (timer) clearTimeout(timer);
    tracked = { orderId, cancelled };
    card.hidden = false;
    recheck.hidden = true;
    card.dataset.state = "loading";
    details.replaceChildren(detailRow("Order", el("code", {}, orderId)));
    showStatus(status, "pending", "Checking the payment…");
    poll(FIRST_DELAY_MS, Date.now());
  }

  recheck.addEventListener("click", () => track(tracked.orderId, tracked.cancelled));
  dismiss.addEventListener("click", () => {
    if (timer) clearTimeout(timer);
    card.hidden = true;
    cleanUrl();
  });

  return {
    /** Start tracking the order named in the URL, if any. */
    resumeFromUrl() {
      const { orderId, cancelled } = orderFromUrl();
      if (orderId) track(orderId, cancelled);
    },
  };
}
