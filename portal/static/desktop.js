// The desktop viewer: waits until the desktop is ready, asks the portal for a single-use
// ticket, and opens the screen with noVNC through the VNC proxy. The ticket is offered as a
// WebSocket subprotocol, so it never appears in a URL. Also follows the desktop's state and
// time left, extends it, and sends pasted text to the desktop's clipboard (never the reverse).

const page = document.body.dataset;
const screen = document.getElementById("screen");
const statusLine = document.getElementById("status");
const stateBadge = document.getElementById("state");
const timeLeft = document.getElementById("time-left");
const timeLeftValue = document.getElementById("time-left-value");
const idleNote = document.getElementById("idle");
const extendButton = document.getElementById("extend");
const disconnectButton = document.getElementById("disconnect");
const reconnectButton = document.getElementById("reconnect");
const pasteText = document.getElementById("paste-text");
const pasteButton = document.getElementById("paste-send");

const ACTIVE = new Set(["starting", "running", "stopping"]);
const POLL_MS = 1000;
const FOLLOW_MS = 15000;

let rfb = null;
let expiresAt = page.expiresAt ? new Date(page.expiresAt) : null;

function say(text) {
  statusLine.textContent = text;
}

function reasonOf(answer, body) {
  const error = body && body.error;
  return error ? `${error.message} (${error.code})` : `the portal answered ${answer.status}`;
}

async function ask(url, method = "GET", body = undefined) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = page.csrf;
    headers["Content-Type"] = "application/json";
  }
  const answer = await fetch(url, {
    method, headers, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const parsed = await answer.json().catch(() => null);
  if (!answer.ok) {
    throw new Error(reasonOf(answer, parsed));
  }
  return parsed;
}

function showState(desktop) {
  const badge = document.createElement("span");
  badge.className = `badge badge-${desktop.state}`;
  badge.textContent = desktop.state;
  stateBadge.replaceChildren(badge);
  expiresAt = desktop.expires_at ? new Date(desktop.expires_at) : null;
  timeLeft.hidden = !expiresAt;
  extendButton.hidden = !expiresAt || !ACTIVE.has(desktop.state);
  // Where the platform stops idle desktops, say so once the warning time has come.
  const warned = desktop.idle_warning_at && Date.now() >= new Date(desktop.idle_warning_at);
  idleNote.hidden = !(warned && desktop.culls_at && ACTIVE.has(desktop.state));
  if (!idleNote.hidden) {
    idleNote.textContent = `Idle: it stops at ${new Date(desktop.culls_at).toLocaleTimeString()}`
      + " unless used.";
  }
  showTimeLeft();
}

function span(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

function showTimeLeft() {
  if (expiresAt) {
    timeLeftValue.textContent = span((expiresAt - Date.now()) / 1000);
  }
}

async function untilReady() {
  for (;;) {
    const desktop = await ask(page.stateUrl);
    showState(desktop);
    if (!ACTIVE.has(desktop.state)) {
      say(`This desktop is ${desktop.state}${desktop.reason ? ": " + desktop.reason : ""}.`);
      return false;
    }
    if (desktop.ready) {
      return true;
    }
    const steps = desktop.progress || [];
    say(steps.length ? `Starting: ${steps[steps.length - 1].message}…` : "Starting…");
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function connect() {
  reconnectButton.hidden = true;
  try {
    if (!(await untilReady())) {
      return;
    }
    say("Connecting…");
    const [{ default: RFB }, ticket] = await Promise.all([
      import(page.rfb), ask(page.ticketUrl, "POST", {}),
    ]);
    const connection = new RFB(screen, ticket.url, { wsProtocols: ["binary", ticket.protocol] });
    rfb = connection;
    rfb.scaleViewport = true;
    rfb.focusOnClick = true;
    rfb.addEventListener("connect", () => {
      screen.dataset.connected = "true";
      disconnectButton.disabled = false;
      say("Connected. Keys and pointer go to the desktop while its screen has the focus.");
      rfb.focus();
    });
    rfb.addEventListener("disconnect", (event) => {
      if (rfb !== connection) {
        return; // an earlier connection's last word
      }
      screen.dataset.connected = "false";
      disconnectButton.disabled = true;
      reconnectButton.hidden = false;
      rfb = null;
      say(event.detail.clean ? "Disconnected. The desktop keeps running."
        : "The connection to the desktop was lost.");
    });
    rfb.addEventListener("securityfailure", (event) => {
      say(`The desktop refused the connection: ${event.detail.reason || "no reason given"}.`);
    });
  } catch (problem) {
    say(`Cannot open the desktop: ${problem.message}`);
    reconnectButton.hidden = false;
  }
}

async function follow() {
  try {
    showState(await ask(page.stateUrl));
  } catch (problem) {
    // The next round tries again; the screen itself does not depend on this.
  }
}

extendButton.addEventListener("click", async () => {
  extendButton.disabled = true;
  try {
    const desktop = await ask(page.extendUrl, "POST", {});
    if (desktop && desktop.expires_at) {
      showState(desktop);
    } else {
      await follow();
    }
    say("Extended.");
  } catch (problem) {
    say(`Cannot extend: ${problem.message}`);
  } finally {
    extendButton.disabled = false;
  }
});

disconnectButton.addEventListener("click", () => {
  if (rfb) {
    rfb.disconnect();
  }
});

reconnectButton.addEventListener("click", () => connect());

pasteButton.addEventListener("click", () => {
  if (!rfb) {
    say("Connect first, then paste.");
    return;
  }
  rfb.clipboardPasteFrom(pasteText.value);
  say("Sent to the desktop's clipboard.");
  rfb.focus();
});

setInterval(showTimeLeft, 1000);
setInterval(follow, FOLLOW_MS);
connect();
