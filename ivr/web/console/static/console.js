// The console's page script: a form says it is working while it submits, and an error
// summary takes the focus so a screen reader announces it. No framework, no inline script.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-progress]")) {
    form.addEventListener("submit", () => {
      const button = form.querySelector("button[type=submit]");
      if (button) {
        button.setAttribute("aria-busy", "true");
        button.dataset.label = button.textContent;
        button.textContent = form.dataset.progress;
      }
    });
  }
  const summary = document.querySelector(".error-summary");
  if (summary) summary.focus();
});
