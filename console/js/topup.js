// Online top-up: payment method (EPay channels as separate choices, Creem's products), the
// amount (presets + custom, validated as the server does), the exact price before paying,
// then POST /checkout and off to the provider's page.

import { Submission } from "./api.js";
import { $, busy, clearStatus, el, setFieldError, showStatus } from "./dom.js";
import {
  formatMoney,
  formatQuota,
  groupDigits,
  listPrice,
  parseWholeNumber,
  percentOff,
  priceFor,
} from "./money.js";

const CHANNEL_NAMES = { alipay: "Alipay", wxpay: "WeChat Pay", qqpay: "QQ Pay" };

export function channelName(channel) {
  return CHANNEL_NAMES[channel] ?? channel.charAt(0).toUpperCase() + channel.slice(1);
}

/** "EPay · WeChat Pay" for an order, with the method's display name from the options. */
export function methodLabel(order, options) {
  const method = options?.methods?.find((m) => m.id === order.method);
  const name = method?.name ?? order.method.charAt(0).toUpperCase() + order.method.slice(1);
  return order.channel ? `${name} · ${channelName(order.channel)}` : name;
}

/** Every way to pay as one choice: a method, or one channel of a method with channels. */
export function paymentChoices(methods) {
  return methods.flatMap((method) =>
    method.channels?.length
      ? method.channels.map((channel) => ({
          key: `${method.id}:${channel}`,
          method,
          channel,
          label: `${method.name} · ${channelName(channel)}`,
        }))
      : [{ key: method.id, method, channel: null, label: method.name }],
  );
}

const isProductBased = (choice) => Boolean(choice?.method.products?.length);

/** The amount as the server validates it: {amount} or {error}. */
export function validateAmount(text, options) {
  const min = BigInt(options.min_topup);
  const max = BigInt(options.max_topup);
  const range = `from ${groupDigits(String(min))} to ${groupDigits(String(max))}`;
  if (String(text).trim() === "") return { error: `Enter an amount ${range}.` };
  const value = parseWholeNumber(text);
  if (value === null) return { error: `Enter a whole number of units ${range} (no decimals).` };
  if (value < min || value > max) return { error: `The amount must be ${range} units.` };
  return { amount: Number(value) };
}

/** What `amount` units cost with this choice: list price, discount, the price to pay. */
export function quote(choice, amount, options) {
  const { method } = choice;
  const discount = options.discounts?.[String(amount)] ?? null;
  return {
    quota: BigInt(amount) * BigInt(options.quota_per_unit),
    currency: method.currency,
    list: listPrice(amount, method.unit_price, method.currency),
    discount,
    pay: priceFor(amount, method.unit_price, discount ?? "1", method.currency),
  };
}

function summaryRow(term, ...details) {
  return el("div", { class: "summary-row" }, el("dt", {}, term), el("dd", {}, ...details));
}

export function setupTopup(ctx) {
  const form = $("#topup-form");
  const methodList = $("#method-options");
  const amountGroup = $("#amount-group");
  const presetList = $("#amount-options");
  const amountInput = $("#topup-amount");
  const amountError = $("#topup-amount-error");
  const amountHint = $("#topup-amount-hint");
  const productGroup = $("#product-group");
  const productList = $("#product-options");
  const summary = $("#topup-summary");
  const submit = $("#topup-submit");
  const status = $("#topup-status");
  let choices = [];
  const submission = new Submission(); // a retried submit gets the same order, never a second

  const options = () => ctx.state.options;
  const selectedChoice = () => {
    const key = form.querySelector('input[name="pay-method"]:checked')?.value;
    return choices.find((c) => c.key === key) ?? null;
  };
  const selectedProduct = () => {
    const id = form.querySelector('input[name="pay-product"]:checked')?.value;
    return selectedChoice()?.method.products?.find((p) => p.product_id === id) ?? null;
  };

  function renderMethods() {
    choices = paymentChoices(options().methods ?? []);
    methodList.replaceChildren(
      ...choices.map((choice, index) =>
        el(
          "label",
          { class: "choice" },
          el("input", { type: "radio", name: "pay-method", value: choice.key, checked: index === 0 }),
          el("span", { class: "choice-main" }, choice.label),
          el("span", { class: "choice-sub" }, isProductBased(choice) ? "Packages" : choice.method.currency),
        ),
      ),
    );
    const none = choices.length === 0;
    submit.disabled = none;
    if (none) showStatus(status, "info", "Online payment is not available right now. You can still redeem a code.");
  }

  function renderPresets() {
    const choice = selectedChoice();
    const current = amountInput.value.trim();
    presetList.replaceChildren(
      ...(options().amount_options ?? []).map((amount) => {
        const priced = choice && !isProductBased(choice) ? quote(choice, amount, options()) : null;
        return el(
          "label",
          { class: "choice" },
          el("input", { type: "radio", name: "amount-preset", value: String(amount),
                        checked: current === String(amount) }),
          el("span", { class: "choice-main" }, `${groupDigits(String(amount))}`),
          priced ? el("span", { class: "choice-sub" }, formatMoney(priced.pay, priced.currency)) : null,
          priced?.discount ? el("span", { class: "badge" }, `${percentOff(priced.discount)}% off`) : null,
        );
      }),
    );
  }

  function renderProducts(choice) {
    const products = choice.method.products;
    const previous = form.querySelector('input[name="pay-product"]:checked')?.value;
    productList.replaceChildren(
      ...products.map((product, index) =>
        el(
          "label",
          { class: "choice" },
          el("input", { type: "radio", name: "pay-product", value: product.product_id,
                        checked: previous ? previous === product.product_id : index === 0 }),
          el("span", { class: "choice-main" }, product.name),
          el("span", { class: "choice-sub" }, `${formatQuota(product.quota)} quota`),
          el("span", { class: "choice-sub strong" }, formatMoney(product.price, product.currency)),
        ),
      ),
    );
  }

  function validateField({ show }) {
    const result = validateAmount(amountInput.value, options());
    setFieldError(amountInput, amountError, show ? result.error : null);
    return result;
  }

  function renderSummary() {
    const choice = selectedChoice();
    if (!choice) return summary.replaceChildren();
    if (isProductBased(choice)) {
      const product = selectedProduct();
      if (!product) return summary.replaceChildren();
      return summary.replaceChildren(
        summaryRow("You get", `${formatQuota(product.quota)} quota`),
        summaryRow("Package", product.name),
        summaryRow("To pay", el("strong", { class: "to-pay" }, formatMoney(product.price, product.currency))),
      );
    }
    const { amount } = validateAmount(amountInput.value, options());
    if (amount === undefined) {
      return summary.replaceChildren(summaryRow("To pay", "Choose an amount to see the price."));
    }
    const priced = quote(choice, amount, options());
    summary.replaceChildren(
      summaryRow("You get", `${formatQuota(priced.quota)} quota`),
      summaryRow("Price", `${groupDigits(String(amount))} × ${formatMoney(choice.method.unit_price, priced.currency)} = ${formatMoney(priced.list, priced.currency)}`),
      summaryRow("Discount", priced.discount ? `${percentOff(priced.discount)}% off (× ${priced.discount})` : "None"),
      summaryRow("To pay", el("strong", { class: "to-pay" }, formatMoney(priced.pay, priced.currency))),
    );
  }

  function render() {
    const choice = selectedChoice();
    const products = isProductBased(choice);
    amountGroup.hidden = products;
    productGroup.hidden = !products;
    if (products) renderProducts(choice);
    else renderPresets();
    renderSummary();
  }

  function payloadFor(choice) {
    if (isProductBased(choice)) {
      const product = selectedProduct();
      return product ? { method: choice.method.id, product_id: product.product_id } : null;
    }
    const result = validateField({ show: true });
    if (result.error) return null;
    const payload = { amount: result.amount, method: choice.method.id };
    if (choice.channel) payload.channel = choice.channel;
    return payload;
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearStatus(status);
    const choice = selectedChoice();
    if (!choice) return showStatus(status, "error", "Choose a payment method.");
    const payload = payloadFor(choice);
    if (!payload) {
      if (!isProductBased(choice)) amountInput.focus();
      return undefined;
    }
    const restore = busy(submit, "Creating order…");
    const idempotencyKey = submission.keyFor(payload);
    try {
      const order = await ctx.api.checkout(payload, idempotencyKey);
      submission.finished();
      if (!order.pay_url) throw new Error("The payment page address is missing; try again.");
      showStatus(status, "pending",
        `Order created: ${formatMoney(order.pay_money, order.currency)} to pay. Taking you to ${choice.method.name}…`);
      window.location.assign(order.pay_url);
    } catch (error) {
      submission.finished(error);
      restore();
      if (error.code === "invalid_amount") {
        setFieldError(amountInput, amountError, error.message);
        amountInput.focus();
      } else {
        showStatus(status, "error", error.message);
      }
    }
    return undefined;
  }

  form.addEventListener("change", (event) => {
    if (event.target.name === "amount-preset") {
      amountInput.value = event.target.value;
      validateField({ show: true });
    }
    if (event.target.name === "pay-method") clearStatus(status);
    render();
  });
  // Errors appear on submit and then follow the typing; never on blur, where the message
  // would shift the button under a pointer that is clicking it.
  amountInput.addEventListener("input", () => {
    for (const preset of form.querySelectorAll('input[name="amount-preset"]')) {
      preset.checked = preset.value === amountInput.value.trim();
    }
    validateField({ show: amountInput.getAttribute("aria-invalid") === "true" });
    renderSummary();
  });
  form.addEventListener("submit", onSubmit);

  return {
    /** (Re)build the form from GET /topup/options. */
    setOptions() {
      const opts = options();
      amountHint.textContent = `Whole units from ${groupDigits(String(opts.min_topup))} to ${groupDigits(String(opts.max_topup))}; 1 unit = ${formatQuota(opts.quota_per_unit)} quota.`;
      if (!amountInput.value && opts.amount_options?.length) {
        amountInput.value = String(opts.amount_options[0]);
      }
      renderMethods();
      render();
    },
  };
}
