// Low-balance alert (GET/PUT /account/alerts) with its banner, and auto top-up
// (GET/PUT /account/auto-topup): the rule, its state, the saved card and the last failure.

import { $, busy, clearStatus, formatTime, setFieldError, showStatus } from "./dom.js";
import { formatQuota, parseWholeNumber } from "./money.js";

const STATES = {
  off: "Off",
  active: "On",
  pending: "Paying…",
  disabled_after_failures: "Off after 3 failed payments",
};
const FAILURES = {
  card_declined: "the card was declined",
  requires_action: "the bank asked you to confirm the payment",
  no_saved_card: "no card is saved",
};

/** A whole number typed by the user, or null for empty; {error} for anything else. */
function readNumber(input, { optional = false } = {}) {
  const text = input.value.trim();
  if (text === "" && optional) return { value: null };
  const value = parseWholeNumber(text);
  if (value === null) return { error: "Enter a whole number (digits only)." };
  return { value: Number(value) };
}

export function setupAlerts(ctx) {
  const banner = $("#low-balance-banner");
  const thresholdInput = $("#alert-threshold");
  const thresholdError = $("#alert-threshold-error");
  const alertStatus = $("#alert-status");
  const autoStatus = $("#autotopup-status");
  const fields = {
    enabled: $("#autotopup-enabled"),
    threshold: $("#autotopup-threshold"),
    amount: $("#autotopup-amount"),
    max: $("#autotopup-max"),
  };
  let threshold = null;
  // What the user is typing is never overwritten by a read that lands meanwhile (the first
  // load, a refresh, the pending poll): a form shows the server's values until it is edited,
  // and again once it is saved.
  const edited = { alert: false, rule: false };
  thresholdInput.addEventListener("input", () => { edited.alert = true; });
  for (const input of Object.values(fields)) {
    input.addEventListener("input", () => { edited.rule = true; });
    input.addEventListener("change", () => { edited.rule = true; });
  }
  // While an off-session payment is in flight ("Paying…"), the rule is read again now and
  // then, so its outcome (success or failure) shows without a manual refresh.
  const PENDING_POLL_MS = 3000;
  let pendingPoll = null;

  function watchPending(rule) {
    clearTimeout(pendingPoll);
    pendingPoll = null;
    if (rule.state !== "pending") return;
    pendingPoll = setTimeout(async () => {
      pendingPoll = null;
      try {
        const fresh = await ctx.api.getAutoTopup();
        renderRule(fresh);
        if (fresh.state !== "pending") await ctx.refreshAccount?.();
        else watchPending(fresh);
      } catch {
        watchPending(rule); // a failed read: try again later
      }
    }, PENDING_POLL_MS);
  }

  function renderBanner() {
    const account = ctx.state.account;
    const below = account && threshold !== null && Number(account.quota) < threshold;
    banner.hidden = !below;
    if (below) {
      $("#low-balance-text").textContent =
        `Your balance (${formatQuota(account.quota)} quota) is below your alert of ${formatQuota(threshold)} quota.`;
    }
  }

  function renderRule(rule) {
    const state = $("#autotopup-state");
    state.textContent = STATES[rule.state] ?? rule.state;
    state.dataset.state = rule.state;
    $("#autotopup-card").textContent = rule.saved_card
      ? `${rule.saved_card.brand ?? "card"} •••• ${rule.saved_card.last4 ?? ""}`
      : "None yet: tick “Save this card” at your next Stripe top-up.";
    const failure = rule.last_failure;
    $("#autotopup-failure-row").hidden = !failure;
    if (failure) {
      $("#autotopup-failure").textContent =
        `${formatTime(failure.at)}: ${FAILURES[failure.code] ?? failure.code} (${rule.failures} in a row)`;
    }
    const success = rule.last_success;
    $("#autotopup-success-row").hidden = !success;
    if (success) $("#autotopup-success").textContent = formatTime(success.at);
    if (edited.rule) return;
    fields.enabled.checked = Boolean(rule.enabled);
    if (rule.threshold !== undefined) fields.threshold.value = String(rule.threshold);
    if (rule.amount !== undefined) fields.amount.value = String(rule.amount);
    if (rule.max_per_day !== undefined) fields.max.value = String(rule.max_per_day);
  }

  async function load() {
    try {
      const [alerts, rule] = await Promise.all([ctx.api.getAlerts(), ctx.api.getAutoTopup()]);
      threshold = alerts.low_balance_threshold;
      if (!edited.alert) thresholdInput.value = threshold === null ? "" : String(threshold);
      renderBanner();
      renderRule(rule);
      watchPending(rule);
    } catch (error) {
      showStatus(alertStatus, "error", `Could not load your alerts: ${error.message}`);
    }
  }

  $("#alert-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearStatus(alertStatus);
    const read = readNumber(thresholdInput, { optional: true });
    setFieldError(thresholdInput, thresholdError, read.error ?? null);
    if (read.error) return thresholdInput.focus();
    const restore = busy($("#alert-save"), "Saving…");
    try {
      const saved = await ctx.api.putAlerts(read.value);
      threshold = saved.low_balance_threshold;
      edited.alert = false;
      renderBanner();
      showStatus(alertStatus, "success",
        threshold === null ? "Alert removed." : `You will be warned below ${formatQuota(threshold)} quota.`);
    } catch (error) {
      showStatus(alertStatus, "error", error.message);
    } finally {
      restore();
    }
    return undefined;
  });

  $("#autotopup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearStatus(autoStatus);
    const values = {};
    let firstBad = null;
    for (const [name, input] of [["threshold", fields.threshold], ["amount", fields.amount], ["max", fields.max]]) {
      const read = readNumber(input);
      setFieldError(input, $(`#${input.id}-error`), read.error ?? null);
      if (read.error && !firstBad) firstBad = input;
      values[name] = read.value;
    }
    if (firstBad) return firstBad.focus();
    const restore = busy($("#autotopup-save"), "Saving…");
    try {
      const rule = await ctx.api.putAutoTopup({
        enabled: fields.enabled.checked,
        threshold: values.threshold,
        amount: values.amount,
        method: "stripe",
        max_per_day: values.max,
      });
      edited.rule = false;
      renderRule(rule);
      watchPending(rule);
      showStatus(autoStatus, "success", rule.enabled ? "Auto top-up is on." : "Auto top-up is off.");
    } catch (error) {
      if (error.code === "invalid_amount") setFieldError(fields.amount, $("#autotopup-amount-error"), error.message);
      showStatus(autoStatus, "error", error.message);
    } finally {
      restore();
    }
    return undefined;
  });

  return { load, renderBanner };
}
