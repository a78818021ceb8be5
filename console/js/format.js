// How quota and money read on the page (all exact: see money.js).

import { formatQuota, groupDigits, quotaToMoney } from "./money.js";

/** "$10.00" for a quota, at quota_per_unit quota per unit. */
export function quotaAsMoney(quota, options, unitSymbol = "$") {
  if (!options?.quota_per_unit) return "";
  const money = groupDigits(quotaToMoney(quota, options.quota_per_unit));
  return money.startsWith("-") ? `-${unitSymbol}${money.slice(1)}` : `${unitSymbol}${money}`;
}

/** "5,000,000 quota ($10.00)". */
export function quotaWithMoney(quota, options, unitSymbol) {
  const money = quotaAsMoney(quota, options, unitSymbol);
  return money ? `${formatQuota(quota)} quota (${money})` : `${formatQuota(quota)} quota`;
}

/** A signed quota change: "+5,000,000" / "−500,000" (a real minus sign). */
export function signedQuota(delta) {
  const value = BigInt(delta);
  if (value < 0n) return `\u2212${formatQuota(-value)}`;
  return `+${formatQuota(value)}`;
}
