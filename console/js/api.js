// The API of ../shared/API.md, and nothing else. Every failure becomes an ApiError carrying
// the contract's error code and message (and Retry-After, in seconds, when the server sent it).

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

const NETWORK_MESSAGE = "Could not reach the server. Check your connection and try again.";
const PAGE_SIZE = 10;
// A request under an Idempotency-Key is retried with the same key when its outcome is unknown
// (no answer, a server error, the first attempt still running): the server then answers the
// first result instead of doing it twice.
const KEYED_ATTEMPTS = 3;
const RETRY_DELAY_MS = 500;
const MAX_RETRY_DELAY_MS = 4000;

/** A fresh Idempotency-Key: random, 32 hex digits (crypto.randomUUID needs a secure context). */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** True when the server may or may not have done it: retry with the same key, never a new one. */
export function outcomeUnknown(error) {
  return (
    error instanceof ApiError &&
    (error.status === 0 || error.status >= 500 || error.code === "idempotency_key_in_progress")
  );
}

/**
 * One Idempotency-Key per submission of a form. Submitting the same payload again while the
 * last attempt's outcome is unknown is a retry of that submission (same key); once the server
 * has answered (done or refused), or the payload changed, it is a new submission (new key).
 */
export class Submission {
  #pending = null;

  keyFor(payload) {
    const fingerprint = toJson(payload);
    if (this.#pending?.fingerprint !== fingerprint) {
      this.#pending = { fingerprint, key: newIdempotencyKey() };
    }
    return this.#pending.key;
  }

  /** After an attempt: keep the key only if its outcome is unknown. */
  finished(error = null) {
    if (!outcomeUnknown(error)) this.#pending = null;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Retry-After is either seconds or an HTTP date; the wait in whole seconds, or null. */
export function parseRetryAfter(value, now = Date.now()) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - now) / 1000));
}

async function errorFrom(response) {
  const body = await response.json().catch(() => null);
  const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
  if (body?.error?.code) {
    return new ApiError(response.status, body.error.code, body.error.message, retryAfter);
  }
  if (response.status === 401) {
    return new ApiError(401, "unauthorized", "Your session has expired. Please sign in again.");
  }
  const message = body?.message ?? `The server answered ${response.status}.`;
  return new ApiError(response.status, `http_${response.status}`, message, retryAfter);
}

function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/** JSON with BigInts written as exact integers (quota goes up to 10^18, past 2^53). */
export function toJson(value) {
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return `[${value.map((item) => toJson(item ?? null)).join(",")}]`;
  if (value !== null && Object.getPrototypeOf(value) === Object.prototype) {
    const fields = Object.entries(value).filter(([, item]) => item !== undefined && typeof item !== "function");
    return `{${fields.map(([name, item]) => `${JSON.stringify(name)}:${toJson(item)}`).join(",")}}`;
  }
  return JSON.stringify(value); // strings, numbers, booleans, null, and objects with toJSON
}

/** JSON.parse, with integers past 2^53 as exact BigInts where the browser gives the reviver
 * the source text (quota and limits go up to 10^18); elsewhere they stay numbers. */
export function parseJson(text) {
  return JSON.parse(text, (_key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && /^-?\d+$/.test(context?.source ?? "")
      ? BigInt(context.source)
      : value,
  );
}

/** A limit's scope as a path segment: the characters a valid scope has are all legal there
 * as they are ("key:ci@team"), anything else is percent-encoded. */
function scopePath(scope) {
  return encodeURIComponent(scope).replace(/%(3A|40|2B|3D)/gi, (escaped) => decodeURIComponent(escaped));
}

export function createApi({ baseUrl, getToken, onUnauthorized }) {
  const root = String(baseUrl ?? "").replace(/\/+$/, "");

  async function request(method, path, { body, query, idempotencyKey, accept } = {}) {
    if (!idempotencyKey) return attempt(method, path, { body, query, accept });
    for (let tries = 1; ; tries += 1) {
      try {
        return await attempt(method, path, { body, query, idempotencyKey });
      } catch (error) {
        if (!outcomeUnknown(error) || tries >= KEYED_ATTEMPTS) throw error;
        const backoff = RETRY_DELAY_MS * 2 ** (tries - 1);
        await sleep(Math.min(MAX_RETRY_DELAY_MS, error.retryAfter ? error.retryAfter * 1000 : backoff));
      }
    }
  }

  async function attempt(method, path, { body, query, idempotencyKey, accept }) {
    const headers = { Accept: accept ?? "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    let response;
    try {
      response = await fetch(root + withQuery(path, query), {
        method,
        headers,
        body: body === undefined ? undefined : toJson(body),
      });
    } catch {
      throw new ApiError(0, "network_error", NETWORK_MESSAGE);
    }
    if (!response.ok) {
      const error = await errorFrom(response);
      if (error.status === 401) onUnauthorized?.(error);
      throw error;
    }
    if (accept && accept !== "application/json") return { status: response.status, data: await response.blob() };
    const data = await response.text().then(parseJson).catch(() => null);
    return { status: response.status, data };
  }

  const data = async (...args) => (await request(...args)).data;
  const page = (path, cursor) => data("GET", path, { query: { limit: PAGE_SIZE, cursor } });

  return {
    createAccount: (referralCode) =>
      request("POST", "/account", { body: referralCode ? { referral_code: referralCode } : {} }),
    getAccount: () => data("GET", "/account"),
    getAlerts: () => data("GET", "/account/alerts"),
    putAlerts: (threshold) =>
      data("PUT", "/account/alerts", { body: { low_balance_threshold: threshold } }),
    getAutoTopup: () => data("GET", "/account/auto-topup"),
    putAutoTopup: (rule) => data("PUT", "/account/auto-topup", { body: rule }),
    listLimits: () => data("GET", "/limits"),
    putLimit: (scope, maxQuota, period) =>
      data("PUT", `/limits/${scopePath(scope)}`, { body: { max_quota: BigInt(maxQuota), period } }),
    deleteLimit: (scope) => data("DELETE", `/limits/${scopePath(scope)}`),
    listLedger: (cursor) => page("/ledger", cursor),
    usageSummary: (groupBy, from, to) =>
      data("GET", "/usage/summary", { query: { group_by: groupBy, from, to } }),
    exportLedger: (from, to) =>
      data("GET", "/ledger/export", { query: { from, to }, accept: "text/csv" }),
    getOptions: () => data("GET", "/topup/options"),
    checkout: (payload, idempotencyKey) =>
      data("POST", "/checkout", { body: payload, idempotencyKey }),
    listTopups: (cursor) => page("/topups", cursor),
    getTopup: (orderId) => data("GET", `/topups/${encodeURIComponent(orderId)}`),
    redeem: (code) => data("POST", "/redeem", { body: { code } }),
    transferReferral: (quota, idempotencyKey) =>
      data("POST", "/referral/transfer", { body: { quota }, idempotencyKey }),
    createCodes: (payload) => data("POST", "/admin/redemption-codes", { body: payload }),
    listCodes: (cursor) => page("/admin/redemption-codes", cursor),
    disableCode: (codeId) =>
      data("DELETE", `/admin/redemption-codes/${encodeURIComponent(codeId)}`),
  };
}
