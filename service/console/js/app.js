// Entry point: the API key form and a hash router (#/jobs, #/jobs/{id}, #/models, #/models/{id},
// #/playground, #/subject, #/video, #/anomaly).
import { api, ApiError, auth } from "./api.js";
import { forgetInputs } from "./inputs.js";
import { renderJobs } from "./jobs.js";
import { renderDetail } from "./detail.js";
import { renderModel } from "./models.js";
import { renderModels } from "./modellist.js";
import { renderPlayground } from "./playground.js";
import { renderSubject } from "./subject.js";
import { renderVideo } from "./video.js";
import { renderAnomaly } from "./anomaly.js";
import { h } from "./ui.js";

const main = document.getElementById("main");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const keyStatus = document.getElementById("key-status");
const forget = document.getElementById("key-forget");

let cleanup = null;
let access = "unknown"; // "key" | "anonymous" | "none"

async function checkAccess() {
  try {
    await api("/v1/jobs?limit=1");
    access = auth.key ? "key" : "anonymous";
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) {
      keyStatus.textContent = `Service unreachable: ${err.message}`;
      keyStatus.dataset.state = "error";
      return false;
    }
    access = "none";
  }
  showKeyState();
  return access !== "none";
}

function showKeyState(message) {
  const states = {
    key: ["Key in use for this tab", "ok"],
    anonymous: ["No key needed: this service is open", "ok"],
    none: [auth.key ? "This key was refused" : "Paste an API key to start", "error"],
  };
  const [text, state] = states[access] || ["", ""];
  keyStatus.textContent = message || text;
  keyStatus.dataset.state = state;
  forget.hidden = !auth.key;
  keyInput.placeholder = auth.key ? "saved · paste to replace" : "paste your key";
}

keyForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    keyInput.focus();
    return;
  }
  auth.set(key);
  keyInput.value = "";
  if (await checkAccess()) route();
  else {
    auth.clear();
    showKeyState("That key was refused (401)");
    keyInput.focus();
  }
});

forget.addEventListener("click", async () => {
  auth.clear();
  await forgetInputs();
  access = "unknown";
  await checkAccess();
  route();
  keyInput.focus();
});

function needKey() {
  return h("section.panel.empty", {},
    h("h1", {}, "Sign in with an API key"),
    h("p", {}, "Paste the API key you were given into the field at the top of the page. It is kept in this "
      + "browser tab only (session storage) and sent as ", h("code", {}, "Authorization: Bearer"), " with every request."));
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const hash = location.hash.replace(/^#\/?/, "") || "jobs";
  const [page, arg] = hash.split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  main.replaceChildren();
  if (access === "none") {
    main.append(needKey());
    document.title = "Sign in · visionjobs";
    return;
  }
  if (page === "jobs" && arg) cleanup = renderDetail(main, decodeURIComponent(arg));
  else if (page === "models" && arg) cleanup = renderModel(main, decodeURIComponent(arg));
  else if (page === "models") cleanup = renderModels(main);
  else if (page === "playground") cleanup = renderPlayground(main);
  else if (page === "subject") cleanup = renderSubject(main);
  else if (page === "video") cleanup = renderVideo(main);
  else if (page === "anomaly") cleanup = renderAnomaly(main);
  else cleanup = renderJobs(main);
}

let lastPage = null;
window.addEventListener("hashchange", () => {
  route();
  const page = location.hash.split("/")[1] || "jobs";
  if (page !== lastPage) main.focus({ preventScroll: true }); // move focus to the new page for screen readers
  lastPage = page;
});

await checkAccess();
route();
