/**
 * Storefront behaviour that HTML alone cannot give; every page works without it.
 *
 * Checkout: once Pay is pressed, the button is disabled and says the bank is being asked,
 * and a second press (or Enter in a field) sends nothing more. The server is safe against a
 * double submission anyway (one order per checkout token); this is for the shopper, who
 * would otherwise wonder whether anything happened during the bank's few seconds.
 */

for (const form of document.querySelectorAll("form[data-checkout-form]")) {
  guardPayment(form);
}

function guardPayment(form) {
  const button = form.querySelector("[data-pay-button]");
  const status = form.querySelector("[data-pay-status]");
  if (!button) return;
  const idleLabel = button.textContent;

  form.addEventListener("submit", (event) => {
    if (form.dataset.busy === "true") {
      event.preventDefault(); // Already asking the bank: one payment per press.
      return;
    }
    form.dataset.busy = "true";
    // Disabled after the submission has started: the form still goes, further presses do not.
    button.disabled = true;
    button.setAttribute("aria-disabled", "true");
    button.classList.add("is-busy");
    button.textContent = button.dataset.busyLabel || "Asking your bank…";
    if (status) status.textContent = "Asking your bank. This takes a few seconds; please keep this page open.";
  });

  // Coming back with the Back button restores the page from the cache as it was left: busy.
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    delete form.dataset.busy;
    button.disabled = false;
    button.removeAttribute("aria-disabled");
    button.classList.remove("is-busy");
    button.textContent = idleLabel;
    if (status) status.textContent = "";
  });
}
