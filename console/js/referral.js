// Referral: the user's link and code (copyable), reward quota, total earned, invited count,
// and "Transfer to Balance" (POST /referral/transfer) with the minimum explained.

import { Submission } from "./api.js";
import { $, busy, clearStatus, copyText, setFieldError, showStatus } from "./dom.js";
import { quotaAsMoney, quotaWithMoney } from "./format.js";
import { formatQuota, parseWholeNumber, trimZeros } from "./money.js";

/** The smallest transfer: the options' referral_min_transfer, else one unit of quota. */
export function minimumTransfer(options) {
  return BigInt(options.referral_min_transfer ?? options.quota_per_unit);
}

export function referralLink(affCode, location = window.location) {
  const url = new URL(location.pathname, location.origin);
  url.searchParams.set("aff", affCode);
  return url.toString();
}

export function validateTransfer(text, available, minimum) {
  if (String(text).trim() === "") return { error: "Enter the quota to transfer." };
  const value = parseWholeNumber(text);
  if (value === null) return { error: "Enter a whole number of quota (no decimals)." };
  if (value < minimum) return { error: `The minimum transfer is ${formatQuota(minimum)} quota.` };
  if (value > available) {
    return { error: `You have ${formatQuota(available)} reward quota; enter at most that.` };
  }
  return { quota: Number(value) };
}

export function setupReferral(ctx) {
  const linkInput = $("#referral-link");
  const codeInput = $("#referral-code");
  const copyStatus = $("#copy-status");
  const form = $("#transfer-form");
  const amountInput = $("#transfer-amount");
  const amountError = $("#transfer-amount-error");
  const hint = $("#transfer-hint");
  const allButton = $("#transfer-all");
  const button = $("#transfer-submit");
  const status = $("#transfer-status");

  const symbol = () => ctx.state.config.unitSymbol;
  const available = () => BigInt(ctx.state.account?.aff_quota ?? 0);
  const submission = new Submission(); // a retried transfer moves the quota once

  async function copy(input, what) {
    const copied = await copyText(input.value, input);
    showStatus(copyStatus, copied ? "success" : "info",
      copied ? `${what} copied to the clipboard.` : `Press Ctrl+C (⌘C) to copy the selected ${what.toLowerCase()}.`);
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearStatus(status);
    const result = validateTransfer(amountInput.value, available(), minimumTransfer(ctx.state.options));
    setFieldError(amountInput, amountError, result.error);
    if (result.error) {
      amountInput.focus();
      return;
    }
    const restore = busy(button, "Transferring…");
    const idempotencyKey = submission.keyFor({ quota: result.quota });
    try {
      await ctx.api.transferReferral(result.quota, idempotencyKey);
      submission.finished();
      restore();
      amountInput.value = "";
      showStatus(status, "success",
        `Moved ${quotaWithMoney(result.quota, ctx.state.options, symbol())} to your balance.`);
      await ctx.afterChange();
    } catch (error) {
      submission.finished(error);
      restore();
      if (["transfer_below_minimum", "insufficient_aff_quota", "invalid_request"].includes(error.code)) {
        setFieldError(amountInput, amountError, error.message);
      } else {
        showStatus(status, "error", error.message);
      }
    }
  }

  $("#copy-link").addEventListener("click", () => copy(linkInput, "Link"));
  $("#copy-code").addEventListener("click", () => copy(codeInput, "Code"));
  allButton.addEventListener("click", () => {
    amountInput.value = available().toString();
    setFieldError(amountInput, amountError, null);
    amountInput.focus();
  });
  amountInput.addEventListener("input", () => setFieldError(amountInput, amountError, null));
  form.addEventListener("submit", onSubmit);

  return {
    render(account, options) {
      linkInput.value = referralLink(account.aff_code);
      codeInput.value = account.aff_code;
      $("#aff-quota").textContent = formatQuota(account.aff_quota);
      $("#aff-quota-money").textContent = `≈ ${quotaAsMoney(account.aff_quota, options, symbol())}`;
      $("#aff-history").textContent = formatQuota(account.aff_history_quota);
      $("#aff-count").textContent = formatQuota(account.aff_count);
      $("#rebate-percent").textContent = `${trimZeros(String(options.referral_rebate_percent ?? "0"))}%`;
      const minimum = minimumTransfer(options);
      hint.textContent = `Minimum transfer: ${quotaWithMoney(minimum, options, symbol())}. Available: ${formatQuota(account.aff_quota)} quota.`;
      allButton.disabled = available() === 0n;
    },
  };
}
