// Exact decimal arithmetic for prices and quota, on strings and BigInt (never JS floats):
// a decimal is {units, scale} meaning units / 10^scale. Rounding is half-up (away from zero),
// as the server's billing.money does, so the price shown is the price charged.

const ZERO_DECIMAL = new Set([
  "BIF", "CLP", "DJF", "GNF", "IDR", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND",
  "VUV", "XAF", "XOF", "XPF",
]);
const THREE_DECIMAL = new Set(["BHD", "JOD", "KWD", "OMR", "TND"]);
const DECIMAL_PATTERN = /^(-?)(\d+)(?:\.(\d+))?$/;
const WHOLE_NUMBER_PATTERN = /^\d+$/;

/** Digits after the point of a currency's minor unit (ISO 4217). */
export function currencyExponent(currency) {
  const code = String(currency).toUpperCase();
  if (ZERO_DECIMAL.has(code)) return 0;
  if (THREE_DECIMAL.has(code)) return 3;
  return 2;
}

export function parseDecimal(text) {
  const match = DECIMAL_PATTERN.exec(String(text).trim());
  if (!match) throw new RangeError(`not a decimal number: ${text}`);
  const [, sign, whole, fraction = ""] = match;
  const magnitude = BigInt(whole + fraction);
  return { units: sign ? -magnitude : magnitude, scale: fraction.length };
}

export function integer(value) {
  return { units: BigInt(value), scale: 0 };
}

export function multiply(a, b) {
  return { units: a.units * b.units, scale: a.scale + b.scale };
}

function pow10(exponent) {
  return 10n ** BigInt(exponent);
}

/** Half-up division of two BigInts (ties go away from zero). */
function divideHalfUp(numerator, denominator) {
  const negative = numerator < 0n !== denominator < 0n;
  const n = numerator < 0n ? -numerator : numerator;
  const d = denominator < 0n ? -denominator : denominator;
  const quotient = (2n * n + d) / (2n * d);
  return negative ? -quotient : quotient;
}

/** The decimal rounded half-up to `places` digits after the point. */
export function round(decimal, places) {
  if (places >= decimal.scale) {
    return { units: decimal.units * pow10(places - decimal.scale), scale: places };
  }
  return { units: divideHalfUp(decimal.units, pow10(decimal.scale - places)), scale: places };
}

/** numerator / denominator (integers) rounded half-up to `places` digits. */
export function ratio(numerator, denominator, places) {
  const units = divideHalfUp(BigInt(numerator) * pow10(places), BigInt(denominator));
  return { units, scale: places };
}

/** The plain decimal string, with exactly `scale` digits after the point ("21.90"). */
export function toPlain(decimal) {
  const negative = decimal.units < 0n;
  const digits = (negative ? -decimal.units : decimal.units)
    .toString()
    .padStart(decimal.scale + 1, "0");
  const cut = digits.length - decimal.scale;
  const fraction = decimal.scale ? `.${digits.slice(cut)}` : "";
  return `${negative ? "-" : ""}${digits.slice(0, cut)}${fraction}`;
}

/** "1234567.5" -> "1,234,567.5" (grouping only; the digits are kept as they are). */
export function groupDigits(text) {
  const [whole, fraction] = String(text).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const digits = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${sign}${digits}${fraction === undefined ? "" : `.${fraction}`}`;
}

/**
 * The price of `amount` units: amount x unit price x discount, half-up to the currency's
 * minor unit ("7.30" x 3 -> "21.90", where floats give 21.900000000000002).
 */
export function priceFor(amount, unitPrice, discount, currency) {
  const gross = multiply(integer(amount), parseDecimal(unitPrice));
  const net = multiply(gross, parseDecimal(discount ?? "1"));
  return toPlain(round(net, currencyExponent(currency)));
}

/** The undiscounted price of `amount` units. */
export function listPrice(amount, unitPrice, currency) {
  return priceFor(amount, unitPrice, "1", currency);
}

/** "0.95" -> "5", "0.875" -> "12.5": the percentage taken off by a multiplier. */
export function percentOff(multiplier) {
  const m = parseDecimal(multiplier);
  const off = { units: (pow10(m.scale) - m.units) * 100n, scale: m.scale };
  return trimZeros(toPlain(off));
}

/** A rebate percentage as written ("10", "12.50" -> "12.5"). */
export function trimZeros(text) {
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

/** Quota as a whole number with digit grouping: 5000000 -> "5,000,000". */
export function formatQuota(quota) {
  return groupDigits(BigInt(quota).toString());
}

/** Quota as money: quota / quota_per_unit, half-up to two places ("10.00"). */
export function quotaToMoney(quota, quotaPerUnit, places = 2) {
  return toPlain(ratio(quota, quotaPerUnit, places));
}

/** A money string with grouping and its currency: "1,234.50 USD". */
export function formatMoney(amount, currency) {
  return `${groupDigits(amount)} ${currency}`;
}

/**
 * A whole number typed by a user, as the server accepts it: digits only, optional
 * surrounding spaces. Returns a BigInt, or null for anything else ("1.5", "1e3", "-2", "").
 */
export function parseWholeNumber(text) {
  const trimmed = String(text).trim();
  return WHOLE_NUMBER_PATTERN.test(trimmed) ? BigInt(trimmed) : null;
}
