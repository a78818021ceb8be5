// Spend limits (GET /limits, PUT and DELETE /limits/{scope}): each limit with the spend of its
// current window as a progress bar, a form to add or change one, and a remove button.

import { $, busy, clearStatus, el, formatTime, setFieldError, showStatus } from "./dom.js";
import { quotaAsMoney } from "./format.js";
import { formatQuota, parseWholeNumber } from "./money.js";

// As the server checks them (billing/usage/limits.py), so a bad value never leaves the page.
const KEY_ID = /^[A-Za-z0-9._:@+=~-]{1,128}$/;
const MAX_QUOTA = 10n ** 18n;
const PERIODS = {
  day: "per day",
  week: "per week",
  month: "per month",
  total: "in total",
};
const WINDOWS = {
  day: "Today (UTC)",
  week: "This week (from Monday, UTC)",
  month: "This month (UTC)",
  total: "Since the limit was set",
};

export function scopeLabel(scope) {
  return scope === "account" ? "Whole account" : `API key ${scope.slice("key:".length)}`;
}

/** Spend as a share of the limit in tenths of a percent (BigInt: quotas exceed 2^53). */
function permille(spent, maxQuota) {
  const max = BigInt(maxQuota);
  if (max === 0n) return 1000n;
  return (BigInt(spent) * 1000n) / max;
}

function percentText(share) {
  return `${share / 10n}${share % 10n ? `.${share % 10n}` : ""}%`;
}

function limitBar(limit) {
  const share = permille(limit.spent, limit.max_quota);
  const reached = BigInt(limit.spent) >= BigInt(limit.max_quota);
  const fill = el("div", { class: "limit-fill" });
  fill.style.width = `${Number(share > 1000n ? 1000n : share) / 10}%`; // CSSOM: allowed by the CSP
  const shown = BigInt(limit.spent) > BigInt(limit.max_quota) ? limit.max_quota : limit.spent;
  return el(
    "div",
    {
      class: reached ? "limit-bar reached" : share >= 800n ? "limit-bar near" : "limit-bar",
      role: "progressbar",
      "aria-label": `Spend of ${scopeLabel(limit.scope)}`,
      "aria-valuemin": 0,
      "aria-valuemax": limit.max_quota,
      "aria-valuenow": shown,
      "aria-valuetext": `${formatQuota(limit.spent)} of ${formatQuota(limit.max_quota)} quota (${percentText(share)})`,
      "data-spent": limit.spent,
    },
    fill,
  );
}

function quotaText(quota, options) {
  const money = quotaAsMoney(quota, options);
  return money ? `${formatQuota(quota)} quota (${money})` : `${formatQuota(quota)} quota`;
}

export function setupLimits(ctx) {
  const list = $("#limits-list");
  const empty = $("#limits-empty");
  const listStatus = $("#limits-status");
  const form = $("#limit-form");
  const formStatus = $("#limit-form-status");
  const keyRow = $("#limit-key-row");
  const keyInput = $("#limit-key");
  const keyError = $("#limit-key-error");
  const period = $("#limit-period");
  const maxInput = $("#limit-max");
  const maxError = $("#limit-max-error");
  const save = $("#limit-save");

  const chosenScope = () => form.querySelector('input[name="limit-scope"]:checked').value;

  function showKeyRow() {
    keyRow.hidden = chosenScope() !== "key";
    if (keyRow.hidden) setFieldError(keyInput, keyError, null);
  }

  /** Fill the form with a limit, to change it. */
  function edit(limit) {
    const isKey = limit.scope !== "account";
    $(isKey ? "#limit-scope-key" : "#limit-scope-account").checked = true;
    keyInput.value = isKey ? limit.scope.slice("key:".length) : "";
    showKeyRow();
    period.value = limit.period;
    maxInput.value = String(limit.max_quota);
    clearStatus(formStatus);
    maxInput.focus();
  }

  async function remove(limit, button) {
    clearStatus(listStatus);
    const restore = busy(button, "Removing…");
    try {
      await ctx.api.deleteLimit(limit.scope);
      await load();
      showStatus(listStatus, "success", `Limit removed: ${scopeLabel(limit.scope)}.`);
    } catch (error) {
      restore();
      showStatus(listStatus, "error", error.message);
    }
  }

  function item(limit) {
    const options = ctx.state.options;
    const reached = BigInt(limit.spent) >= BigInt(limit.max_quota);
    const title = el("h3", { class: "limit-scope" }, scopeLabel(limit.scope));
    const change = el("button", { type: "button", class: "button ghost small" }, "Change");
    change.addEventListener("click", () => edit(limit));
    const removeButton = el("button", { type: "button", class: "button danger small" }, "Remove");
    removeButton.addEventListener("click", () => remove(limit, removeButton));
    const resets = limit.window_end ? `Resets ${formatTime(limit.window_end)}.` : "Never resets.";
    return el(
      "li",
      { class: "limit", "data-scope": limit.scope },
      el("div", { class: "limit-head" },
        title,
        reached ? el("span", { class: "badge status-failed" }, "Limit reached") : null,
      ),
      el("p", { class: "limit-rule" },
        `At most ${quotaText(limit.max_quota, options)} ${PERIODS[limit.period] ?? limit.period}.`),
      limitBar(limit),
      el("p", { class: "limit-spent" },
        `${WINDOWS[limit.period] ?? limit.window}: `,
        el("strong", { class: "limit-spent-figure" }, formatQuota(limit.spent)),
        ` of ${formatQuota(limit.max_quota)} quota spent, ${formatQuota(limit.remaining)} left. ${resets}`),
      el("div", { class: "actions" }, change, removeButton),
    );
  }

  async function load() {
    try {
      const { limits } = await ctx.api.listLimits();
      list.replaceChildren(...limits.map(item));
      empty.hidden = limits.length > 0;
    } catch (error) {
      showStatus(listStatus, "error", `Could not load your limits: ${error.message}`);
    }
  }

  /** {scope, maxQuota, period} when the form is valid; otherwise field errors and null. */
  function read() {
    let firstBad = null;
    let scope = "account";
    if (chosenScope() === "key") {
      const keyId = keyInput.value.trim();
      const bad = KEY_ID.test(keyId)
        ? null
        : keyId
          ? "A key ID has 1 to 128 letters, digits or . _ : @ + = ~ - (no spaces)."
          : "Enter the ID of the API key.";
      setFieldError(keyInput, keyError, bad);
      if (bad) firstBad = keyInput;
      scope = `key:${keyId}`;
    }
    const maxQuota = parseWholeNumber(maxInput.value);
    const badMax =
      maxQuota === null
        ? "Enter the maximum as a whole number of quota (digits only)."
        : maxQuota > MAX_QUOTA
          ? `At most ${formatQuota(MAX_QUOTA)} quota.`
          : null;
    setFieldError(maxInput, maxError, badMax);
    if (badMax && !firstBad) firstBad = maxInput;
    if (firstBad) {
      firstBad.focus();
      return null;
    }
    return { scope, maxQuota, period: period.value };
  }

  form.addEventListener("change", (event) => {
    if (event.target.name === "limit-scope") showKeyRow();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearStatus(formStatus);
    const wanted = read();
    if (!wanted) return;
    const restore = busy(save, "Saving…");
    try {
      const saved = await ctx.api.putLimit(wanted.scope, wanted.maxQuota, wanted.period);
      await load();
      showStatus(formStatus, "success",
        `${scopeLabel(saved.scope)}: at most ${formatQuota(saved.max_quota)} quota ${PERIODS[saved.period]}.`);
    } catch (error) {
      // The server's message names the field it refused.
      if (/^max_quota/.test(error.message)) setFieldError(maxInput, maxError, error.message);
      else if (/^scope/.test(error.message)) setFieldError(keyInput, keyError, error.message);
      showStatus(formStatus, "error", error.message);
    } finally {
      restore();
    }
  });

  $("#limits-refresh").addEventListener("click", () => {
    clearStatus(listStatus);
    load();
  });
  showKeyRow();
  return { load };
}
