// Sign-in. Two modes, chosen by config.json:
// - "local": the local stack's dev issuer (POST tokenUrl {sub, admin}) behind a small form;
// - "oidc": the authorization-code flow with PKCE (S256) against Cognito's hosted UI or any
//   OIDC issuer. The id token is kept in sessionStorage (gone when the tab closes) and sent
//   as the bearer token; the API's JWT authorizer is what verifies it.

const TOKEN_KEY = "topup.idToken";
const FLOW_KEY = "topup.oidcFlow";
const ADMIN_GROUP = "admin";

export class AuthError extends Error {}

function base64UrlDecode(segment) {
  const base64 = segment.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function base64UrlEncode(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The claims of a JWT (unverified: only for display and routing in the page). */
export function decodeClaims(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) throw new AuthError("The sign-in token is malformed.");
  try {
    return JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    throw new AuthError("The sign-in token is malformed.");
  }
}

/** The user's groups: Cognito sends a JSON array; some issuers send one string. */
function groupsOf(claims) {
  const groups = claims["cognito:groups"] ?? claims.groups ?? [];
  if (Array.isArray(groups)) return groups.map(String);
  return String(groups).replace(/^\[|\]$/g, "").split(/[\s,]+/).filter(Boolean);
}

function randomString(byteCount = 32) {
  return base64UrlEncode(crypto.getRandomValues(new Uint8Array(byteCount)));
}

async function s256(verifier) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64UrlEncode(new Uint8Array(digest));
}

/** A signed-in user as the page sees it. */
function sessionFrom(token) {
  const claims = decodeClaims(token);
  return {
    token,
    userId: String(claims.sub ?? ""),
    name: String(claims.email ?? claims["cognito:username"] ?? claims.sub ?? ""),
    isAdmin: groupsOf(claims).includes(ADMIN_GROUP),
    expiresAt: typeof claims.exp === "number" ? claims.exp * 1000 : null,
  };
}

function isExpired(session) {
  return session.expiresAt !== null && session.expiresAt <= Date.now();
}

class TokenStore {
  read() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  write(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  }

  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

class BaseAuth {
  constructor(settings) {
    this.settings = settings;
    this.tokens = new TokenStore();
  }

  /** The current session, or null (a missing, malformed or expired token signs out). */
  current() {
    const token = this.tokens.read();
    if (!token) return null;
    try {
      const session = sessionFrom(token);
      if (!isExpired(session)) return session;
    } catch {
      // fall through: a token we cannot read is no session
    }
    this.tokens.clear();
    return null;
  }

  /** Nothing to finish on this page load (the OIDC mode overrides it). */
  async completeRedirect() {
    return null;
  }

  /** Drop the session in this tab. */
  forget() {
    this.tokens.clear();
  }

  /** Sign out; true when the browser is leaving for the issuer's logout page. */
  async signOut() {
    this.forget();
    return false;
  }
}

class LocalAuth extends BaseAuth {
  get mode() {
    return "local";
  }

  async signIn({ userId, admin }) {
    const response = await fetch(this.settings.tokenUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sub: userId, admin: Boolean(admin) }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.token !== "string") {
      throw new AuthError(body?.error?.message ?? "The dev sign-in failed.");
    }
    this.tokens.write(body.token);
    return sessionFrom(body.token);
  }
}

class OidcAuth extends BaseAuth {
  get mode() {
    return "oidc";
  }

  /** Explicit endpoints, else the issuer's discovery document, else Cognito's paths. */
  async endpoints() {
    if (this.resolved) return this.resolved;
    const { authority, authorizationEndpoint, tokenEndpoint, endSessionEndpoint } = this.settings;
    const base = String(authority ?? "").replace(/\/+$/, "");
    if (authorizationEndpoint && tokenEndpoint) {
      this.resolved = { authorize: authorizationEndpoint, token: tokenEndpoint,
                        logout: endSessionEndpoint ?? null, cognito: false };
    } else if (/\.amazoncognito\.com$/i.test(new URL(base).hostname)) {
      this.resolved = cognitoEndpoints(base);
    } else {
      this.resolved = await discover(base);
    }
    return this.resolved;
  }

  /** Leave for the hosted sign-in page; `returnTo` is where to land afterwards. */
  async signIn({ returnTo }) {
    const endpoints = await this.endpoints();
    const flow = { verifier: randomString(48), state: randomString(), nonce: randomString(),
                   returnTo };
    sessionStorage.setItem(FLOW_KEY, JSON.stringify(flow));
    const url = new URL(endpoints.authorize);
    url.search = new URLSearchParams({
      response_type: "code",
      client_id: this.settings.clientId,
      redirect_uri: this.settings.redirectUri,
      scope: this.settings.scope ?? "openid email profile",
      state: flow.state,
      nonce: flow.nonce,
      code_challenge: await s256(flow.verifier),
      code_challenge_method: "S256",
    }).toString();
    window.location.assign(url.toString());
  }

  /**
   * On the way back from the hosted UI (?code&state or ?error): check the state, exchange
   * the code with the PKCE verifier, check the nonce, keep the id token. Returns the URL to
   * show next (the page the user started from), or null when this load is no redirect.
   */
  async completeRedirect() {
    const params = new URLSearchParams(window.location.search);
    const code = params.get("code");
    const error = params.get("error");
    if (!code && !error) return null;
    const flow = JSON.parse(sessionStorage.getItem(FLOW_KEY) ?? "null");
    sessionStorage.removeItem(FLOW_KEY);
    if (!flow || params.get("state") !== flow.state) {
      throw new AuthError("The sign-in response does not match this browser's sign-in; try again.");
    }
    if (error) {
      throw new AuthError(params.get("error_description") ?? `Sign-in failed: ${error}.`);
    }
    const token = await this.exchange(code, flow.verifier);
    if (decodeClaims(token).nonce !== flow.nonce) {
      throw new AuthError("The sign-in response was not issued for this sign-in; try again.");
    }
    this.tokens.write(token);
    return flow.returnTo;
  }

  async exchange(code, verifier) {
    const endpoints = await this.endpoints();
    const response = await fetch(endpoints.token, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "authorization_code",
        code,
        redirect_uri: this.settings.redirectUri,
        client_id: this.settings.clientId,
        code_verifier: verifier,
      }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.id_token !== "string") {
      throw new AuthError(body.error_description ?? "The sign-in could not be completed.");
    }
    return body.id_token;
  }

  /** Clear the session, then end the issuer's session too when it has a logout endpoint. */
  async signOut() {
    this.forget();
    const endpoints = await this.endpoints().catch(() => null);
    if (!endpoints?.logout) return false;
    const url = new URL(endpoints.logout);
    url.search = new URLSearchParams(endpoints.cognito
      ? { client_id: this.settings.clientId, logout_uri: this.settings.redirectUri }
      : { client_id: this.settings.clientId,
          post_logout_redirect_uri: this.settings.redirectUri }).toString();
    window.location.assign(url.toString());
    return true;
  }
}

function cognitoEndpoints(base) {
  return { authorize: `${base}/oauth2/authorize`, token: `${base}/oauth2/token`,
           logout: `${base}/logout`, cognito: true };
}

async function discover(base) {
  try {
    const response = await fetch(`${base}/.well-known/openid-configuration`);
    if (response.ok) {
      const doc = await response.json();
      return { authorize: doc.authorization_endpoint, token: doc.token_endpoint,
               logout: doc.end_session_endpoint ?? null, cognito: false };
    }
  } catch {
    // a Cognito custom domain has no discovery document: use its fixed paths
  }
  return cognitoEndpoints(base);
}

export function createAuth(authConfig) {
  if (authConfig?.mode === "local") return new LocalAuth(authConfig);
  if (authConfig?.mode === "oidc") return new OidcAuth(authConfig);
  throw new AuthError(`Unknown sign-in mode in config.json: ${authConfig?.mode}`);
}
