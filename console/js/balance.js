// The balance card: quota as quota and as money, used quota, request count.

import { $ } from "./dom.js";
import { quotaAsMoney } from "./format.js";
import { formatQuota } from "./money.js";

export function renderBalance(account, options, unitSymbol) {
  $("#balance-quota").textContent = formatQuota(account.quota);
  $("#balance-money").textContent = quotaAsMoney(account.quota, options, unitSymbol);
  $("#used-quota").textContent = formatQuota(account.used_quota);
  $("#used-money").textContent = `≈ ${quotaAsMoney(account.used_quota, options, unitSymbol)}`;
  $("#request-count").textContent = formatQuota(account.request_count);
  $("#unit-note").textContent =
    `${unitSymbol}1 = 1 unit = ${formatQuota(options.quota_per_unit)} quota`;
  const held = $("#held-row");
  held.hidden = !account.held_quota;
  if (account.held_quota) $("#held-quota").textContent = formatQuota(account.held_quota);
}
