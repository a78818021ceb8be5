// Redemption code: POST /redeem. Every refusal shows the server's one message; 429 disables
// the button until the Retry-After time has passed.

import { $, busy, clearStatus, clockTime, formatDuration, setFieldError, showStatus } from "./dom.js";
import { quotaWithMoney } from "./format.js";

export function setupRedeem(ctx) {
  const form = $("#redeem-form");
  const input = $("#redeem-code");
  const fieldError = $("#redeem-code-error");
  const button = $("#redeem-submit");
  const status = $("#redeem-status");
  let blockedUntil = 0;
  let unblockTimer = null;

  function block(seconds, serverMessage) {
    if (seconds === null) return showStatus(status, "error", serverMessage);
    blockedUntil = Date.now() + seconds * 1000;
    button.disabled = true;
    clearTimeout(unblockTimer);
    unblockTimer = setTimeout(() => {
      button.disabled = false;
      showStatus(status, "info", "You can try a code again now.");
    }, seconds * 1000);
    return showStatus(status, "error",
      `Too many failed attempts. Try again in ${formatDuration(seconds)} (at ${clockTime(new Date(blockedUntil))}).`);
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearStatus(status);
    const code = input.value.trim();
    if (!code) {
      setFieldError(input, fieldError, "Enter a redemption code.");
      input.focus();
      return;
    }
    setFieldError(input, fieldError, null);
    const restore = busy(button, "Redeeming…");
    try {
      const result = await ctx.api.redeem(code);
      restore();
      input.value = "";
      showStatus(status, "success",
        `Code redeemed: +${quotaWithMoney(result.quota_added, ctx.state.options, ctx.state.config.unitSymbol)} added to your balance.`);
      await ctx.afterChange();
    } catch (error) {
      restore();
      if (error.status === 429) block(error.retryAfter, error.message);
      else showStatus(status, "error", error.message);
    }
  }

  form.addEventListener("submit", onSubmit);
  input.addEventListener("input", () => setFieldError(input, fieldError, null));
  return {};
}
