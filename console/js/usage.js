// Usage: daily spend over the last 30 days stacked by model (plain SVG, one bar per day, a
// tooltip with the day's exact spend), tables by model and by key (GET /usage/summary), and
// a statement of the ledger for a date range as CSV (GET /ledger/export).

import { $, clearStatus, el, showStatus } from "./dom.js";
import { quotaAsMoney } from "./format.js";
import { formatQuota } from "./money.js";
import { cell } from "./paged.js";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
const WIDTH = 600;
const HEIGHT = 180;
const GAP = 2;

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

/** "1,234 quota ($0.01)": exact, from integers (no floats anywhere). */
function spendText(quota, options) {
  const money = quotaAsMoney(quota, options);
  return money ? `${formatQuota(quota)} quota (${money})` : `${formatQuota(quota)} quota`;
}

function modelColors(days) {
  const models = [...new Set(days.flatMap((day) => Object.keys(day.models ?? {})))].sort();
  return new Map(models.map((model, index) => [model, PALETTE[index % PALETTE.length]]));
}

/** The chart: heights in BigInt proportion to the largest day, drawn in whole SVG units. */
export function renderChart(container, legend, days, options) {
  const colors = modelColors(days);
  const max = days.reduce((top, day) => (BigInt(day.quota) > top ? BigInt(day.quota) : top), 0n);
  const barWidth = WIDTH / days.length;
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-label": "Daily spend over the last 30 days, stacked by model",
    preserveAspectRatio: "none",
    class: "usage-chart",
  });
  days.forEach((day, index) => {
    const group = svg("g", { class: "usage-bar", "data-day": day.key, "data-quota": day.quota, tabindex: 0 });
    const tooltip = `${day.key}: ${spendText(day.quota, options)}`;
    group.append(svg("title", {}, tooltip));
    // A transparent full-height target, so hovering an empty or short day still shows it.
    group.append(svg("rect", { x: index * barWidth, y: 0, width: barWidth, height: HEIGHT, fill: "transparent" }));
    let top = HEIGHT;
    for (const [model, quota] of Object.entries(day.models ?? {}).sort()) {
      if (max === 0n) break;
      const height = Number((BigInt(quota) * BigInt(HEIGHT * 1000)) / max) / 1000;
      top -= height;
      group.append(
        svg("rect", {
          x: index * barWidth + GAP / 2,
          y: top,
          width: Math.max(1, barWidth - GAP),
          height,
          fill: colors.get(model),
          class: "usage-segment",
          "data-model": model,
        }),
      );
    }
    group.addEventListener("mouseenter", () => showDay(day));
    group.addEventListener("focus", () => showDay(day));
    chart.append(group);
  });
  container.replaceChildren(chart);
  legend.replaceChildren(
    ...[...colors].map(([model, color]) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.backgroundColor = color; // CSSOM, which the page's CSP allows
      return el("li", {}, swatch, model);
    }),
  );

  function showDay(day) {
    $("#usage-day").textContent = `${day.key}: ${spendText(day.quota, options)}`;
  }
}

function bucketRow(bucket, options, label) {
  return el("tr", {},
    cell(label(bucket.key)),
    cell(formatQuota(bucket.requests), "num"),
    cell(formatQuota(bucket.prompt_tokens), "num"),
    cell(formatQuota(bucket.completion_tokens), "num"),
    cell(spendText(bucket.quota, options), "num"),
  );
}

async function downloadStatement(ctx) {
  const status = $("#statement-status");
  const from = $("#statement-from").value;
  const to = $("#statement-to").value;
  clearStatus(status);
  try {
    const blob = await ctx.api.exportLedger(from, to);
    const link = el("a", { href: URL.createObjectURL(blob), download: `statement-${from}-${to}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    showStatus(status, "success", "Statement downloaded.");
  } catch (error) {
    showStatus(status, "error", error.message);
  }
}

export function setupUsage(ctx) {
  const status = $("#usage-status");
  $("#statement-form").addEventListener("submit", (event) => {
    event.preventDefault();
    downloadStatement(ctx);
  });

  async function reload() {
    clearStatus(status);
    try {
      const [days, models, keys] = await Promise.all([
        ctx.api.usageSummary("day"),
        ctx.api.usageSummary("model"),
        ctx.api.usageSummary("key"),
      ]);
      const options = ctx.state.options;
      renderChart($("#usage-chart"), $("#usage-legend"), days.buckets, options);
      $("#usage-total").textContent = spendText(days.total.quota, options);
      $("#usage-day").textContent = "";
      $("#usage-models-body").replaceChildren(...models.buckets.map((b) => bucketRow(b, options, (k) => k)));
      $("#usage-keys-body").replaceChildren(
        ...keys.buckets.map((b) => bucketRow(b, options, (k) => k ?? "(no key)")),
      );
      $("#usage-models-empty").hidden = models.buckets.length > 0;
      $("#usage-keys-empty").hidden = keys.buckets.length > 0;
      if (!$("#statement-to").value) {
        $("#statement-to").value = days.to;
        $("#statement-from").value = days.from;
      }
    } catch (error) {
      showStatus(status, "error", `Could not load usage: ${error.message}`);
    }
  }

  $("#usage-refresh").addEventListener("click", reload);
  return { reload };
}
