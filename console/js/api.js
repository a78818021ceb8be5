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

export function createApi({ baseUrl, getToken, onUnauthorized }) {
  const root = String(baseUrl ?? "").replace(/\/+$/, "");

  async function request(method, path, { body, query } = {}) {
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(root + withQuery(path, query), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "network_error", NETWORK_MESSAGE);
    }
    if (!response.ok) {
      const error = await errorFrom(response);
      if (error.status === 401) onUnauthorized?.(error);
      throw error;
    }
    const data = await response.json().catch(() => null);
    return { status: response.status, data };
  }

  const data = async (...args) => (await request(...args)).data;
  const page = (path, cursor) => data("GET", path, { query: { limit: PAGE_SIZE, cursor } });

  return {
    createAccount: (referralCode) =>
      request("POST", "/account", { body: referralCode ? { referral_code: referralCode } : {} }),
    getAccount: () => data("GET", "/account"),
    listLedger: (cursor) => page("/ledger", cursor),
    getOptions: () => data("GET", "/topup/options"),
    checkout: (payload) => data("POST", "/checkout", { body: payload }),
    listTopups: (cursor) => page("/topups", cursor),
    getTopup: (orderId) => data("GET", `/topups/${encodeURIComponent(orderId)}`),
    redeem: (code) => data("POST", "/redeem", { body: { code } }),
    transferReferral: (quota) => data("POST", "/referral/transfer", { body: { quota } }),
    createCodes: (payload) => data("POST", "/admin/redemption-codes", { body: payload }),
    listCodes: (cursor) => page("/admin/redemption-codes", cursor),
    disableCode: (codeId) =>
      data("DELETE", `/admin/redemption-codes/${encodeURIComponent(codeId)}`),
  };
}
