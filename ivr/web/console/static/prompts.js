// "Listen" buttons: the prompt's text in its language, by the browser's speech synthesis.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.listen")) {
    if (!("speechSynthesis" in window)) { button.disabled = true; continue; }
    button.addEventListener("click", () => {
      window.speechSynthesis.cancel();
      const utterance = new SpeechSynthesisUtterance(button.dataset.text);
      utterance.lang = button.dataset.lang;
      window.speechSynthesis.speak(utterance);
    });
  }
});
