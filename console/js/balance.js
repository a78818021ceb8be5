// The balance card: quota as quota and as money, used quota, request count, the credit grants
// that make up the quota (source, remaining, expiry) and what expires within 7 days.

import { $, el, timeElement } from "./dom.js";
import { quotaAsMoney } from "./format.js";
import { formatQuota } from "./money.js";

export const SOURCE_LABELS = {
  paid: "Paid top-up",
  promo: "Promotion",
  code: "Redemption code",
  referral: "Referral reward",
  bonus: "Bonus",
  adjustment: "Adjustment",
};

function grantRow(grant) {
  const label = grant.grant_id === "overdraft" ? "Overdraft" : (SOURCE_LABELS[grant.source] ?? grant.source);
  return el("tr", { "data-grant-id": grant.grant_id },
    el("td", {}, label),
    el("td", { class: "num" }, formatQuota(grant.remaining)),
    el("td", {}, grant.expires_at ? timeElement(grant.expires_at) : "Never"),
  );
}

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
  const grants = account.grants ?? [];
  $("#grants-block").hidden = grants.length === 0;
  $("#grants-body").replaceChildren(...grants.map(grantRow));
  const expiring = account.expiring_quota;
  const note = $("#expiring-note");
  note.hidden = !(expiring && expiring.quota > 0);
  if (!note.hidden) {
    note.replaceChildren(
      `${formatQuota(expiring.quota)} quota expires before `, timeElement(expiring.before), ".");
  }
}
