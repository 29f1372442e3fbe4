// The simulator page: places a simulated call, sends key presses, shows the transcript and
// what the simulated phone received. Talks to /console/simulator/* with the CSRF header.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("simulator");
  if (!root) return;
  const csrf = root.dataset.csrf;
  const log = document.getElementById("sim-log");
  const status = document.getElementById("sim-status");
  const typed = document.getElementById("sim-typed");
  const phone = document.getElementById("sim-phone");
  const callButton = document.getElementById("sim-call");
  const hangupButton = document.getElementById("sim-hangup");
  const silenceButton = document.getElementById("sim-silence");
  const keys = Array.from(document.querySelectorAll(".keypad .key"));
  const sound = document.getElementById("sim-sound");
  let call = null; // {sid, finishOnKey}
  let buffer = "";
  let poll = null;

  async function send(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body || {}),
    });
    const data = await response.json().catch(() => ({error: response.statusText}));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function line(kind, text) {
    const item = document.createElement("li");
    item.className = "event event-" + kind;
    item.textContent = text;
    log.appendChild(item);
    item.scrollIntoView({block: "nearest"});
  }

  function speak(text) {
    if (sound.checked && "speechSynthesis" in window) {
      window.speechSynthesis.speak(new SpeechSynthesisUtterance(text));
    }
  }

  function describe(event) {
    switch (event.kind) {
      case "say": speak(event.text); return ["say", event.text];
      case "play": return ["play", "(recording) " + event.text];
      case "keys": return ["keys", "You pressed " + event.text];
      case "timeout": return ["timeout", "(silence: the question timed out)"];
      case "enqueue": return ["end", "Handed to the agent queue " + event.text + (event.task ? " with " + event.task : "")];
      case "dial": return ["end", "Dialled " + (event.number || event.sip || event.client || event.text)];
      case "reject": return ["end", "Rejected (" + (event.reason || "") + ")"];
      default: return [event.kind, event.text || event.kind];
    }
  }

  function setActive(active) {
    callButton.disabled = active;
    hangupButton.disabled = !active;
    silenceButton.disabled = !active;
    for (const key of keys) key.disabled = !active;
  }

  function show(data) {
    for (const event of data.events || []) {
      const [kind, text] = describe(event);
      line(kind, text);
    }
    buffer = "";
    typed.textContent = "";
    if (data.waiting) {
      call.finishOnKey = data.waiting.finish_on_key;
      status.textContent = "Waiting for keys" + (data.node ? " at " + data.node : "") + (call.finishOnKey ? " (end with " + call.finishOnKey + ")" : "") + ".";
    } else {
      const verified = data.verified ? ", caller verified" : "";
      status.textContent = "Call ended: " + (data.ended_by || "hangup") + (data.node ? " at " + data.node : "") + verified + ".";
      line("end", "Call ended (" + (data.ended_by || "hangup") + ")" + verified);
      finish();
    }
    refreshPhone();
  }

  function finish() {
    setActive(false);
    if (poll) { clearInterval(poll); poll = null; }
    refreshPhone();
  }

  async function refreshPhone() {
    if (!call) return;
    try {
      const response = await fetch(`/console/simulator/calls/${call.sid}/phone`, {headers: {"Accept": "application/json"}});
      if (!response.ok) return;
      const data = await response.json();
      phone.replaceChildren(...data.messages.map((message) => {
        const item = document.createElement("li");
        item.textContent = (message.kind === "sms" ? "SMS to " : "Call to ") + message.to + ": " + (message.body || "(a code call)");
        return item;
      }));
    } catch (error) { /* the next poll tries again */ }
  }

  callButton.addEventListener("click", async () => {
    const [flow, version] = document.getElementById("sim-flow").value.split("|");
    const caller = document.getElementById("sim-caller").value;
    log.replaceChildren();
    phone.replaceChildren();
    status.textContent = "Calling…";
    setActive(true);
    try {
      const data = await send(root.dataset.callsUrl, {flow, version, caller});
      call = {sid: data.call_sid, finishOnKey: ""};
      poll = setInterval(refreshPhone, 1500);
      show(data);
    } catch (error) {
      status.textContent = "The call could not be placed: " + error.message;
      setActive(false);
    }
  });

  async function press(value) {
    if (!call) return;
    for (const key of keys) key.disabled = true;
    try {
      show(await send(`/console/simulator/calls/${call.sid}/keys`, {keys: value}));
    } catch (error) {
      status.textContent = "Error: " + error.message;
      finish();
      return;
    }
    if (!hangupButton.disabled) for (const key of keys) key.disabled = false;
  }

  for (const key of keys) {
    key.addEventListener("click", () => {
      const value = key.dataset.key;
      if (call && call.finishOnKey) {
        buffer += value;
        typed.textContent = buffer;
        if (value === call.finishOnKey) press(buffer);
      } else {
        press(value);
      }
    });
  }
  silenceButton.addEventListener("click", () => press(null));
  hangupButton.addEventListener("click", async () => {
    if (!call) return;
    try { await send(`/console/simulator/calls/${call.sid}/hangup`); } catch (error) { /* gone */ }
    line("end", "You hung up.");
    status.textContent = "Call ended: you hung up.";
    finish();
  });
});
