// The top-up console: sign in, create the account on the first visit (with ?aff=CODE), then
// the balance, online top-up, redemption code, referral, usage, spend limits, history and (for
// admins) codes.

import { setupAdmin } from "./js/admin.js";
import { setupAlerts } from "./js/alerts.js";
import { createApi } from "./js/api.js";
import { createAuth } from "./js/auth.js";
import { renderBalance } from "./js/balance.js";
import { loadConfig } from "./js/config.js";
import { $, busy, clearStatus, el, setFieldError, showStatus } from "./js/dom.js";
import { setupHistory } from "./js/history.js";
import { setupLimits } from "./js/limits.js";
import { setupUsage } from "./js/usage.js";
import { setupOrderTracking } from "./js/order.js";
import { setupRedeem } from "./js/redeem.js";
import { setupReferral } from "./js/referral.js";
import { setupTopup } from "./js/topup.js";

const FLASH_KEY = "topup.flash";

function referralFromUrl() {
  return new URLSearchParams(window.location.search).get("aff")?.trim() || null;
}

function dropQueryParam(name) {
  const url = new URL(window.location.href);
  url.searchParams.delete(name);
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
}

/** Reload the page after signing out, with a message for the next load. */
function reloadWith(message) {
  if (message) sessionStorage.setItem(FLASH_KEY, message);
  window.location.replace(window.location.pathname + window.location.search);
}

function takeFlash() {
  const message = sessionStorage.getItem(FLASH_KEY);
  sessionStorage.removeItem(FLASH_KEY);
  return message;
}

// ------------------------------------------------------------------ sign-in

function showSignIn(ctx, message) {
  $("#signin").hidden = false;
  const aff = referralFromUrl();
  const note = $("#invite-note");
  note.hidden = !aff;
  if (aff) note.textContent = `You were invited with the referral code ${aff}. Sign in to create your account with it.`;
  if (message) showStatus($("#signin-status"), "error", message);
  if (ctx.auth.mode === "local") showLocalSignIn(ctx);
  else showOidcSignIn(ctx);
}

function showLocalSignIn(ctx) {
  const form = $("#local-signin");
  const user = $("#signin-user");
  const userError = $("#signin-user-error");
  const button = $("#signin-submit");
  form.hidden = false;
  user.focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const userId = user.value.trim();
    setFieldError(user, userError, userId ? null : "Enter a user ID.");
    if (!userId) {
      user.focus();
      return;
    }
    const restore = busy(button, "Signing in…");
    try {
      const session = await ctx.auth.signIn({ userId, admin: $("#signin-admin").checked });
      $("#signin").hidden = true;
      await start(ctx, session);
    } catch (error) {
      restore();
      showStatus($("#signin-status"), "error", error.message);
    }
  });
}

function showOidcSignIn(ctx) {
  const panel = $("#oidc-signin");
  const button = $("#oidc-signin-button");
  panel.hidden = false;
  button.addEventListener("click", async () => {
    const restore = busy(button, "Redirecting…");
    try {
      await ctx.auth.signIn({ returnTo: window.location.pathname + window.location.search });
    } catch (error) {
      restore();
      showStatus($("#signin-status"), "error", `Could not start the sign-in: ${error.message}`);
    }
  });
}

// ------------------------------------------------------------------ account

/** POST /account: 201 creates it (binding the inviter), 200 returns the existing one. */
async function ensureAccount(ctx, referralCode) {
  try {
    const { status, data } = await ctx.api.createAccount(referralCode);
    return { account: data, created: status === 201 };
  } catch (error) {
    if (error.code === "invalid_referral_code") return { invalidCode: referralCode, error };
    throw error;
  }
}

function welcomeMessage({ account, created }, referralCode) {
  if (created && referralCode) return `Welcome! Your account was created with the referral code ${referralCode}.`;
  if (created) return "Welcome! Your account is ready.";
  if (referralCode && !account.inviter_id) {
    return `You already have an account, so the referral code ${referralCode} was not applied.`;
  }
  return null;
}

function showAccountSetup(ctx, invalidCode, serverMessage) {
  const card = $("#account-setup");
  const input = $("#setup-referral");
  const inputError = $("#setup-referral-error");
  const button = $("#setup-submit");
  card.hidden = false;
  input.value = invalidCode;
  setFieldError(input, inputError,
    `${serverMessage} No account was created yet: correct the code, or clear it to continue without a referral.`);
  input.focus();
  $("#setup-form").onsubmit = async (event) => {
    event.preventDefault();
    const code = input.value.trim() || null;
    const restore = busy(button, "Creating…");
    try {
      const result = await ensureAccount(ctx, code);
      restore();
      if (result.invalidCode) {
        setFieldError(input, inputError, `${result.error.message} Correct it, or clear the field.`);
        return input.focus();
      }
      dropQueryParam("aff");
      card.hidden = true;
      return enterApp(ctx, result.account, welcomeMessage(result, code));
    } catch (error) {
      restore();
      return showStatus($("#setup-status"), "error", error.message);
    }
  };
}

// ------------------------------------------------------------------ the signed-in page

function renderAccount(ctx) {
  const { account, options, config } = ctx.state;
  renderBalance(account, options, config.unitSymbol);
  ctx.sections.referral.render(account, options);
  ctx.sections.alerts.renderBanner();
}

async function refreshAccount(ctx) {
  try {
    ctx.state.account = await ctx.api.getAccount();
    renderAccount(ctx);
  } catch (error) {
    showStatus($("#balance-status"), "error", `Could not refresh the balance: ${error.message}`);
  }
}

async function enterApp(ctx, account, message) {
  ctx.state.account = account;
  $("#app").hidden = false;
  const pageStatus = $("#page-status");
  if (message) showStatus(pageStatus, "success", message);
  else clearStatus(pageStatus);
  renderAccount(ctx);
  ctx.sections.topup.setOptions();
  ctx.sections.order.resumeFromUrl();
  const loads = [
    ctx.sections.history.reload(),
    ctx.sections.alerts.load(),
    ctx.sections.usage.reload(),
    ctx.sections.limits.load(),
  ];
  if (ctx.session.isAdmin) loads.push(ctx.sections.admin.show());
  await Promise.all(loads);
}

function showUser(ctx, session) {
  $("#user-box").hidden = false;
  $("#user-name").textContent = session.name || session.userId;
  $("#admin-badge").hidden = !session.isAdmin;
  $("#sign-out").addEventListener("click", async () => {
    if (!(await ctx.auth.signOut())) reloadWith(null);
  });
}

async function start(ctx, session) {
  ctx.session = session;
  showUser(ctx, session);
  const pageStatus = $("#page-status");
  showStatus(pageStatus, "pending", "Loading your account…");
  try {
    const referralCode = referralFromUrl();
    const [options, result] = await Promise.all([
      ctx.api.getOptions(),
      ensureAccount(ctx, referralCode),
    ]);
    ctx.state.options = options;
    if (result.invalidCode) {
      clearStatus(pageStatus);
      return showAccountSetup(ctx, result.invalidCode, result.error.message);
    }
    if (referralCode) dropQueryParam("aff");
    return await enterApp(ctx, result.account, welcomeMessage(result, referralCode));
  } catch (error) {
    if (error.status === 401) return undefined; // onUnauthorized already reloads
    const retry = el("button", { type: "button", class: "button small" }, "Try again");
    retry.addEventListener("click", () => window.location.reload());
    return showStatus(pageStatus, "error", `The console could not load: ${error.message} `, retry);
  }
}

function createContext(config, auth) {
  const ctx = { config, auth, session: null, state: { config, options: null, account: null } };
  ctx.api = createApi({
    baseUrl: config.apiBaseUrl,
    getToken: () => auth.current()?.token ?? null,
    onUnauthorized: () => {
      auth.forget();
      reloadWith("Your session has expired. Please sign in again.");
    },
  });
  ctx.refreshAccount = () =>
    Promise.all([refreshAccount(ctx), ctx.sections.alerts.load(), ctx.sections.limits.load()]);
  ctx.afterChange = () => Promise.all([refreshAccount(ctx), ctx.sections.history.reload()]);
  ctx.sections = {
    topup: setupTopup(ctx),
    order: setupOrderTracking(ctx),
    redeem: setupRedeem(ctx),
    referral: setupReferral(ctx),
    history: setupHistory(ctx),
    usage: setupUsage(ctx),
    limits: setupLimits(ctx),
    admin: setupAdmin(ctx),
    alerts: setupAlerts(ctx),
  };
  $("#refresh-balance").addEventListener("click", ctx.refreshAccount);
  return ctx;
}

async function main() {
  const pageStatus = $("#page-status");
  let ctx;
  try {
    const config = await loadConfig();
    ctx = createContext(config, createAuth(config.auth));
  } catch (error) {
    return showStatus(pageStatus, "error", error.message);
  }
  const flash = takeFlash();
  try {
    const returnTo = await ctx.auth.completeRedirect();
    if (returnTo) window.history.replaceState(null, "", returnTo);
  } catch (error) {
    window.history.replaceState(null, "", window.location.pathname);
    return showSignIn(ctx, error.message);
  }
  const session = ctx.auth.current();
  if (!session) return showSignIn(ctx, flash);
  return start(ctx, session);
}

main();
