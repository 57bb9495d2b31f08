// A job's page: follows its log while the job may still write to it. Asks the portal for the
// bytes after the last offset, appends them as text (never as markup), and stops once the job
// is in a final state and nothing more came.

const log = document.getElementById("log");
const statusLine = document.getElementById("log-status");
const stateLine = document.getElementById("job-state");

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 2000;
const KEPT_CHARS = 1024 * 1024; // the page keeps the log's last MiB; the API has all of it

let offset = Number(log.dataset.offset || 0);
const decoder = new TextDecoder();

function say(text) {
  if (statusLine) {
    statusLine.textContent = text;
  }
}

function showState(state) {
  const badge = document.createElement("span");
  badge.className = `badge badge-${state}`;
  badge.textContent = state;
  stateLine.replaceChildren(badge);
}

function append(text) {
  if (!text) {
    return;
  }
  const following = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(document.createTextNode(text));
  if (log.textContent.length > KEPT_CHARS) {
    log.textContent = log.textContent.slice(-KEPT_CHARS);
  }
  if (following) {
    log.scrollTop = log.scrollHeight;
  }
}

async function follow() {
  for (;;) {
    let answer;
    try {
      answer = await fetch(`${log.dataset.logUrl}?offset=${offset}`, {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "text/plain" },
      });
    } catch (problem) {
      say("The portal does not answer; trying again.");
      await new Promise((resolve) => setTimeout(resolve, POLL_MS * 5));
      continue;
    }
    if (!answer.ok) {
      say(`The log cannot be followed: the portal answered ${answer.status}.`);
      return;
    }
    const bytes = new Uint8Array(await answer.arrayBuffer());
    const next = Number(answer.headers.get("X-Next-Offset") || offset);
    const state = answer.headers.get("X-Job-State") || "";
    append(decoder.decode(bytes, { stream: true }));
    offset = next;
    if (state && state !== log.dataset.state) {
      log.dataset.state = state;
      showState(state);
    }
    if (FINAL.has(state) && bytes.length === 0) {
      append(decoder.decode());
      say(`The job is ${state}; its log is complete. Reload the page for its outputs.`);
      return;
    }
    if (bytes.length === 0) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }
}

follow();
