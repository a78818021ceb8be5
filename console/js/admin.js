// Admin view (users in the admin group only; the API enforces it, this only hides the UI):
// generate a batch of redemption codes and download it as CSV, list codes and disable them.

import { $, busy, clearStatus, el, setFieldError, showStatus, timeElement } from "./dom.js";
import { quotaWithMoney } from "./format.js";
import { formatQuota, parseWholeNumber } from "./money.js";
import { cell, pagedTable } from "./paged.js";
import { statusBadge } from "./history.js";

const MAX_COUNT = 1000;

/** One CSV field (RFC 4180), neutralised against formula injection in spreadsheets. */
export function csvField(value) {
  let text = String(value ?? "");
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function codesCsv(batch) {
  const header = ["code", "name", "quota", "max_uses", "expires_at", "batch_id"];
  const rows = batch.codes.map((code) =>
    [code, batch.name, batch.quota, batch.maxUses, batch.expiresAt ?? "", batch.batchId]);
  return `${[header, ...rows].map((row) => row.map(csvField).join(",")).join("\r\n")}\r\n`;
}

function downloadCsv(text, filename) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const link = el("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function positiveInteger(text, label, { min = 1n, max = null } = {}) {
  const value = parseWholeNumber(text);
  if (value === null || value < min || (max !== null && value > max)) {
    const range = max === null ? `at least ${min}` : `from ${min} to ${formatQuota(max)}`;
    return { error: `${label} must be a whole number ${range}.` };
  }
  return { value: Number(value) };
}

export function setupAdmin(ctx) {
  const card = $("#admin-card");
  const form = $("#codes-form");
  const submit = $("#codes-submit");
  const status = $("#codes-form-status");
  const fields = {
    name: [$("#code-name"), $("#code-name-error")],
    quota: [$("#code-quota"), $("#code-quota-error")],
    count: [$("#code-count"), $("#code-count-error")],
    maxUses: [$("#code-max-uses"), $("#code-max-uses-error")],
    expires: [$("#code-expires"), $("#code-expires-error")],
    grantDays: [$("#code-grant-days"), $("#code-grant-days-error")],
    grantPriority: [$("#code-grant-priority"), $("#code-grant-priority-error")],
  };
  const result = $("#new-codes");
  const codesList = $("#new-codes-list");
  const listStatus = $("#codes-list-status");
  let lastBatch = null;

  function codeRow(code) {
    const disable = el("button", { type: "button", class: "button small danger",
                                   disabled: code.status !== "active",
                                   "aria-label": `Disable code ${code.name} ${code.code_id.slice(0, 10)}` },
                       "Disable");
    disable.addEventListener("click", () => disableCode(code, disable));
    return el("tr", { "data-code-id": code.code_id },
      cell(code.name),
      cell(el("code", { title: code.code_id }, `${code.code_id.slice(0, 10)}…`)),
      cell(formatQuota(code.quota), "num"),
      cell(`${formatQuota(code.uses)} / ${formatQuota(code.max_uses)}`, "num"),
      cell(statusBadge(code.status)),
      cell(timeElement(code.expires_at)),
      cell(timeElement(code.created_at)),
      cell(disable),
    );
  }

  const table = pagedTable({
    load: (cursor) => ctx.api.listCodes(cursor),
    body: $("#codes-body"),
    more: $("#codes-more"),
    empty: $("#codes-empty"),
    status: listStatus,
    row: codeRow,
  });

  async function disableCode(code, button) {
    if (!window.confirm(`Disable code "${code.name}" (${code.code_id.slice(0, 10)}…)? It can no longer be redeemed.`)) return;
    const restore = busy(button, "Disabling…");
    try {
      await ctx.api.disableCode(code.code_id);
      await table.reloadUntil((items) =>
        items.some((item) => item.code_id === code.code_id && item.status !== "active"));
      showStatus(listStatus, "success", `Code "${code.name}" disabled.`);
    } catch (error) {
      restore();
      showStatus(listStatus, "error", error.message);
    }
  }

  function readForm() {
    const checks = {
      name: fields.name[0].value.trim()
        ? { value: fields.name[0].value.trim() }
        : { error: "Enter a name for the batch." },
      quota: positiveInteger(fields.quota[0].value, "Quota per code"),
      count: positiveInteger(fields.count[0].value, "Number of codes", { max: BigInt(MAX_COUNT) }),
      maxUses: positiveInteger(fields.maxUses[0].value, "Uses per code"),
      expires: readExpiry(fields.expires[0].value),
      grantDays: optionalInteger(fields.grantDays[0].value, "Days", 1n, 3650n),
      grantPriority: optionalInteger(fields.grantPriority[0].value, "Priority", 0n, 100n),
    };
    let valid = true;
    for (const [key, check] of Object.entries(checks)) {
      const [input, error] = fields[key];
      setFieldError(input, error, check.error);
      if (check.error && valid) {
        input.focus();
        valid = false;
      }
    }
    if (!valid) return null;
    const payload = { name: checks.name.value, quota: checks.quota.value, count: checks.count.value,
                      max_uses: checks.maxUses.value };
    if (checks.expires.value) payload.expires_at = checks.expires.value;
    // A promo code: the quota it credits expires (and/or is spent by priority).
    const grant = {};
    if (checks.grantDays.value !== null) grant.expires_in_days = checks.grantDays.value;
    if (checks.grantPriority.value !== null) grant.priority = checks.grantPriority.value;
    if (Object.keys(grant).length) payload.grant = grant;
    return payload;
  }

  function optionalInteger(text, label, min, max) {
    if (!text.trim()) return { value: null };
    return positiveInteger(text, label, { min, max });
  }

  function readExpiry(text) {
    if (!text) return { value: null };
    const moment = new Date(text);
    if (Number.isNaN(moment.getTime())) return { error: "Enter a valid date and time." };
    if (moment.getTime() <= Date.now()) return { error: "The expiry must be in the future." };
    return { value: moment.toISOString() };
  }

  function showBatch(batch) {
    lastBatch = batch;
    result.hidden = false;
    $("#new-codes-summary").textContent =
      `${batch.codes.length} code(s) "${batch.name}", ${quotaWithMoney(batch.quota, ctx.state.options, ctx.state.config.unitSymbol)} each. They are shown only once: download them now.`;
    codesList.replaceChildren(...batch.codes.map((code) => el("li", {}, el("code", {}, code))));
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearStatus(status);
    const payload = readForm();
    if (!payload) return;
    const restore = busy(submit, "Generating…");
    try {
      const created = await ctx.api.createCodes(payload);
      showBatch({ batchId: created.batch_id, codes: created.codes, name: payload.name,
                  quota: payload.quota, maxUses: payload.max_uses,
                  expiresAt: payload.expires_at ?? null });
      showStatus(status, "success", `Generated ${created.codes.length} code(s).`);
      await table.reloadUntil((items) => items.some((item) => item.batch_id === created.batch_id));
    } catch (error) {
      showStatus(status, "error", error.message);
    } finally {
      restore();
    }
  }

  form.addEventListener("submit", onSubmit);
  $("#download-codes").addEventListener("click", () => {
    if (lastBatch) downloadCsv(codesCsv(lastBatch), `codes-${lastBatch.batchId}.csv`);
  });
  $("#codes-refresh").addEventListener("click", () => table.reload());

  return {
    show() {
      card.hidden = false;
      return table.reload();
    },
  };
}
