// Darkroom's playground: compose a job for a model route, follow its feed, show the result.
// Plain browser JavaScript, no build step. It speaks seed 1's API (/api/...): the same routes
// and limits as curl. Feeds are followed with each job's read-only token (an EventSource cannot
// send the API key), so the key never appears in a URL.
"use strict";

const ROOT = document.body.dataset.root || "";
const KEY_STORE = "darkroom.apiKey";
const HISTORY_STORE = "darkroom.history";
const CHOICE_STORE = "darkroom.choice";
const HISTORY_MAX = 50;
const POLL_MS = 4000;
const TERMINAL = new Set(["completed", "failed", "canceled"]);
const TASK_LABELS = {
  t2i: "Text → image",
  i2i: "Image → image",
  t2v: "Text → video",
  i2v: "Image → video",
};
const ANGLE_LABELS = { t2i: "Multi-angle from text", i2i: "Multi-angle from image" };
const MAX_ANGLES = 8;
// The form routes take a file; the others a JSON body. Path: /api/{model}/{task}.
const FORM_TASKS = new Set(["i2i", "i2v"]);
const VIDEO_TASKS = new Set(["t2v", "i2v"]);
const SCHEMAS = { t2i: "TextToImageRequest", i2i: "ImageToImageForm", t2v: "TextToVideoRequest", i2v: "ImageToVideoForm" };

const $ = (id) => document.getElementById(id);
const el = (tag, { dataset, ...props } = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset || {});
  for (const child of children) if (child != null) node.append(child);
  return node;
};

const state = {
  models: [],
  model: null, // the route's entry from GET /api/models
  task: null,
  image: null, // the File for i2i / i2v
  angles: [], // [{name, checked}]
  previewFields: new Set(), // tasks whose route accepts `preview` (from /openapi.json)
  current: null, // {entry, source, started}
  timer: null,
};

// --- storage ------------------------------------------------------------------------------

const apiKey = () => localStorage.getItem(KEY_STORE) || "";

function loadHistory() {
  try {
    const list = JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]");
    return Array.isArray(list) ? list.filter((e) => e && typeof e.id === "string") : [];
  } catch {
    return [];
  }
}

let history = loadHistory();

function saveHistory() {
  history = history.slice(0, HISTORY_MAX);
  localStorage.setItem(HISTORY_STORE, JSON.stringify(history));
}

// --- HTTP ---------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return fetch(ROOT + path, { ...options, headers });
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return { message: body.message || body.error || response.statusText, fields: body.fields || [] };
  } catch {
    return { message: `${response.status} ${response.statusText}`, fields: [] };
  }
}

const withToken = (path, token) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);

// --- models and tasks ---------------------------------------------------------------------

async function loadModels() {
  const response = await api("/api/models");
  if (response.status === 401) {
    openKeyPanel("This server needs an API key. Paste one and save it.");
    $("model").replaceChildren(el("option", { textContent: "— enter an API key —", value: "" }));
    $("generate").disabled = true;
    return;
  }
  if (!response.ok) {
    showFormError((await errorOf(response)).message);
    return;
  }
  $("generate").disabled = false;
  state.models = await response.json();
  const choice = JSON.parse(localStorage.getItem(CHOICE_STORE) || "{}");
  const select = $("model");
  select.replaceChildren(
    ...state.models.map((m) => el("option", { value: m.name, textContent: `${m.name} · ${m.family}` })),
  );
  const wanted = state.models.find((m) => m.name === choice.model) || state.models[0];
  if (wanted) {
    select.value = wanted.name;
    selectModel(wanted.name, choice.task);
  }
}

async function loadPreviewSupport() {
  // Previews are an optional field: ask the schema which submit bodies accept `preview`.
  try {
    const response = await fetch(`${ROOT}/openapi.json`);
    const schemas = (await response.json()).components?.schemas || {};
    for (const [task, name] of Object.entries(SCHEMAS)) {
      if (schemas[name]?.properties?.preview) state.previewFields.add(task);
    }
  } catch {
    /* no schema: no previews */
  }
  updatePreviewToggle();
}

function updatePreviewToggle() {
  $("previews").closest("label").hidden = !state.previewFields.has(state.task);
}

function selectModel(name, preferredTask) {
  state.model = state.models.find((m) => m.name === name) || null;
  if (!state.model) return;
  const m = state.model;
  const note = m.load_error
    ? `Workers could not load it: ${m.load_error}`
    : !m.served
      ? "No live worker serves this route right now; jobs wait in its queue."
      : `${m.workers_loaded} worker${m.workers_loaded === 1 ? "" : "s"} ready · ${m.queued} in its queue`;
  $("model-note").textContent = note;
  $("model-note").classList.toggle("warn", Boolean(m.load_error || !m.served));

  const tasks = $("tasks");
  const multi = m.default_angles.length > 0;
  tasks.replaceChildren(
    ...m.tasks.map((t) => {
      const input = el("input", { type: "radio", name: "task", value: t, id: `task-${t}` });
      input.addEventListener("change", () => selectTask(t));
      const text = (multi && ANGLE_LABELS[t]) || TASK_LABELS[t] || t;
      return el("label", { className: "seg", htmlFor: `task-${t}` }, input, el("span", { textContent: text }));
    }),
  );
  state.angles = m.default_angles.map((a) => ({ name: a, checked: true }));
  renderAngles();
  selectTask(m.tasks.includes(preferredTask) ? preferredTask : m.tasks[0]);
}

function selectTask(task) {
  state.task = task;
  const radio = $(`task-${task}`);
  if (radio) radio.checked = true;
  const m = state.model;
  const video = VIDEO_TASKS.has(task);
  const form = FORM_TASKS.has(task);
  $("image-field").hidden = !form;
  $("size-row").hidden = form; // an uploaded image sets the aspect ratio
  $("strength-row").hidden = task !== "i2i";
  $("video-row").hidden = !video;
  $("angle-field").hidden = m.default_angles.length === 0;
  $("image-label").textContent = task === "i2v" ? "First frame" : "Input image";

  const { defaults: d, limits: l } = m;
  for (const [id, max, value] of [
    ["width", l.max_width, d.width],
    ["height", l.max_height, d.height],
  ]) {
    Object.assign($(id), { min: 64, max, step: l.size_multiple, value });
  }
  Object.assign($("steps"), { min: l.min_steps, max: l.max_steps, value: d.num_inference_steps });
  $("guidance").value = d.guidance_scale;
  if (video) {
    Object.assign($("frames"), { min: 1, max: l.max_frames, step: l.frame_multiple, value: d.num_frames });
    $("fps").value = d.fps;
  }
  syncOutputs();
  updatePreviewToggle();
  localStorage.setItem(CHOICE_STORE, JSON.stringify({ model: m.name, task }));
}

function syncOutputs() {
  $("steps-out").textContent = $("steps").value;
  $("guidance-out").textContent = Number($("guidance").value).toFixed(1);
  $("strength-out").textContent = Number($("strength").value).toFixed(2);
}

// --- angles -------------------------------------------------------------------------------

function renderAngles() {
  const chosen = state.angles.filter((a) => a.checked).length;
  $("angles").replaceChildren(
    ...state.angles.map((angle, i) => {
      const input = el("input", { type: "checkbox", checked: angle.checked, id: `angle-${i}` });
      input.addEventListener("change", () => {
        angle.checked = input.checked;
        renderAngles();
        $(`angle-${i}`).focus();
      });
      return el("label", { className: "chip", htmlFor: `angle-${i}` }, input, el("span", { textContent: angle.name }));
    }),
  );
  $("angle-count").textContent = `${chosen} of at most ${MAX_ANGLES}`;
}

function addAngle() {
  // The form routes split angles on commas.
  const name = $("angle-custom").value.replaceAll(",", " ").trim();
  if (!name) return;
  const found = state.angles.find((a) => a.name.toLowerCase() === name.toLowerCase());
  if (found) found.checked = true;
  else state.angles.push({ name, checked: true });
  $("angle-custom").value = "";
  renderAngles();
}

function chosenAngles() {
  if (!state.model || state.model.default_angles.length === 0) return null;
  const chosen = state.angles.filter((a) => a.checked).map((a) => a.name);
  const defaults = state.model.default_angles;
  // The route's default set: leave the field out and let the server decide.
  if (chosen.length === defaults.length && chosen.every((a, i) => a === defaults[i])) return null;
  return chosen;
}

// --- the input image ----------------------------------------------------------------------

function setImage(file) {
  if (file && !file.type.startsWith("image/")) {
    showFormError(`${file.name} is not an image.`);
    return;
  }
  state.image = file || null;
  const preview = $("drop-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (file) {
    preview.src = URL.createObjectURL(file);
    preview.alt = `Selected image: ${file.name}`;
    $("drop-text").textContent = `${file.name} — drop another to replace it`;
  } else {
    preview.removeAttribute("src");
    $("drop-text").replaceChildren("Drop an image here, or ", el("u", { textContent: "choose a file" }));
    $("image").value = "";
  }
  preview.hidden = !file;
  $("image-clear").hidden = !file;
  $("drop").classList.toggle("has-image", Boolean(file));
}

// --- submit -------------------------------------------------------------------------------

function showFormError(message, fields = []) {
  const box = $("form-error");
  box.textContent = message;
  box.hidden = !message;
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  for (const f of fields) {
    const input = document.querySelector(`#compose [name="${CSS.escape(f.field)}"]`);
    if (input) input.setAttribute("aria-invalid", "true");
  }
}

function checkLocally() {
  const { limits: l } = state.model;
  const prompt = $("prompt").value.trim();
  const form = FORM_TASKS.has(state.task);
  if (!prompt && !form) return { message: "Write a prompt first.", field: "prompt" };
  if (form && !state.image) return { message: "Choose or drop an input image first.", field: "image" };
  if (!form) {
    for (const side of ["width", "height"]) {
      const v = Number($(side).value);
      const max = side === "width" ? l.max_width : l.max_height;
      if (!Number.isInteger(v) || v < 64 || v > max || v % l.size_multiple) {
        return { message: `${side}: a multiple of ${l.size_multiple} from 64 to ${max}.`, field: side };
      }
    }
  }
  if (VIDEO_TASKS.has(state.task)) {
    const f = Number($("frames").value);
    if (!Number.isInteger(f) || f < 1 || f > l.max_frames || (f - 1) % l.frame_multiple) {
      const shape = l.frame_multiple > 1 ? `k × ${l.frame_multiple} + 1` : "a whole number";
      return { message: `Frames: ${shape}, at most ${l.max_frames}.`, field: "num_frames" };
    }
  }
  const angles = chosenAngles();
  if (angles && (angles.length < 1 || angles.length > MAX_ANGLES)) {
    return { message: `Pick from 1 to ${MAX_ANGLES} angles.`, field: "angles" };
  }
  return null;
}

function buildRequest() {
  const task = state.task;
  const fields = {
    prompt: $("prompt").value.trim(),
    num_inference_steps: Number($("steps").value),
    guidance_scale: Number($("guidance").value),
  };
  const negative = $("negative").value.trim();
  if (negative) fields.negative_prompt = negative;
  if ($("seed").value !== "") fields.seed = Number($("seed").value);
  if (task === "t2i" || task === "t2v") {
    fields.width = Number($("width").value);
    fields.height = Number($("height").value);
  }
  if (task === "i2i") fields.strength = Number($("strength").value);
  if (VIDEO_TASKS.has(task)) {
    fields.num_frames = Number($("frames").value);
    fields.fps = Number($("fps").value);
  }
  const angles = chosenAngles();
  if (angles) fields.angles = angles;
  if (state.previewFields.has(task) && $("previews").checked) fields.preview = true;

  if (!FORM_TASKS.has(task)) {
    return { body: JSON.stringify(fields), headers: { "Content-Type": "application/json" }, fields };
  }
  const body = new FormData();
  body.append("image", state.image, state.image.name || "image.png");
  for (const [name, value] of Object.entries(fields)) {
    body.append(name, Array.isArray(value) ? value.join(",") : String(value));
  }
  return { body, headers: {}, fields };
}

async function generate(event) {
  event?.preventDefault();
  if (!state.model || $("generate").disabled) return;
  const problem = checkLocally();
  if (problem) {
    showFormError(problem.message, [{ field: problem.field }]);
    return;
  }
  showFormError("");
  const { body, headers, fields } = buildRequest();
  $("generate").disabled = true;
  $("generate").textContent = "Submitting…";
  let response;
  try {
    response = await api(`/api/${encodeURIComponent(state.model.name)}/${state.task}`, {
      method: "POST",
      body,
      headers,
    });
  } catch (error) {
    showFormError(`Could not reach the server: ${error.message}`);
    return;
  } finally {
    $("generate").disabled = false;
    $("generate").textContent = "Generate";
  }
  if (!response.ok) {
    const { message, fields: bad } = await errorOf(response);
    if (response.status === 401) openKeyPanel(message);
    showFormError(message, bad);
    return;
  }
  const answer = await response.json();
  const entry = {
    id: answer.session_id,
    token: response.headers.get("Darkroom-Job-Token") || "",
    model: state.model.name,
    task: state.task,
    prompt: fields.prompt,
    angles: fields.angles || state.model.default_angles,
    multi: state.model.default_angles.length > 0,
    size: fields.width ? `${fields.width}×${fields.height}` : "",
    steps: fields.num_inference_steps,
    created: Date.now(),
    status: "pending",
    progress: 0,
    message: answer.message,
    results: [],
    error: null,
  };
  history.unshift(entry);
  saveHistory();
  renderHistory();
  follow(entry);
  // One column (a phone): the result is below the form; bring it into view.
  if (matchMedia("(max-width: 900px)").matches) $("stage").scrollIntoView({ block: "start" });
}

async function cancel() {
  const entry = state.current?.entry;
  if (!entry || TERMINAL.has(entry.status)) return;
  $("cancel").disabled = true;
  try {
    const response = await api(`/api/${encodeURIComponent(entry.id)}`, { method: "DELETE" });
    if (!response.ok && response.status !== 409) {
      setStatus((await errorOf(response)).message);
      return;
    }
    // The feed brings the terminal event; read the status too in case the feed is gone.
    await refresh(entry);
  } finally {
    $("cancel").disabled = false;
  }
}

// --- following a job ----------------------------------------------------------------------

function stopFollowing() {
  state.current?.source?.close();
  clearInterval(state.timer);
  state.timer = null;
}

function follow(entry) {
  stopFollowing();
  state.current = { entry, source: null };
  $("preview").hidden = true;
  $("preview-img").removeAttribute("src");
  $("result").replaceChildren();
  renderJob(entry);
  renderHistory();
  if (TERMINAL.has(entry.status)) {
    refresh(entry); // result URLs may be presigned: ask for fresh ones
    return;
  }
  const source = new EventSource(ROOT + withToken(`/api/${encodeURIComponent(entry.id)}/events`, entry.token));
  state.current.source = source;
  source.onmessage = (e) => {
    const event = JSON.parse(e.data);
    entry.queue = null;
    apply(entry, {
      status: event.status,
      progress: event.progress,
      message: event.message,
      results: event.result_urls || [],
      error: event.error,
    });
  };
  source.addEventListener("queue", (e) => {
    entry.queue = JSON.parse(e.data);
    if (isCurrent(entry)) renderJob(entry);
  });
  source.addEventListener("preview", (e) => {
    const preview = JSON.parse(e.data);
    if (!isCurrent(entry) || TERMINAL.has(entry.status)) return;
    $("preview-img").src = preview.image;
    $("preview-caption").textContent = `Preview · step ${preview.step} of ${preview.total_steps}`;
    $("preview").hidden = false;
  });
  source.onerror = () => {
    // The browser retries by itself (with Last-Event-ID) unless the answer ended the feed.
    if (source.readyState === EventSource.CLOSED && isCurrent(entry)) refresh(entry);
  };
  state.timer = setInterval(() => isCurrent(entry) && renderJob(entry), 1000);
}

const isCurrent = (entry) => state.current?.entry === entry;

function apply(entry, update) {
  const wasTerminal = TERMINAL.has(entry.status);
  Object.assign(entry, update);
  if (!update.results?.length) entry.results = entry.results || [];
  saveHistory();
  renderHistoryItem(entry);
  if (!isCurrent(entry)) return;
  if (TERMINAL.has(entry.status) || entry.status === "expired") {
    stopFollowing();
    if (!wasTerminal || !$("result").childElementCount) renderResult(entry);
  }
  renderJob(entry);
}

async function refresh(entry) {
  try {
    const response = await api(withToken(`/api/${encodeURIComponent(entry.id)}/status`, entry.token));
    if (response.status === 404) {
      apply(entry, { status: "expired", message: "Expired on the server", results: [] });
      if (isCurrent(entry)) renderResult(entry);
      return;
    }
    if (!response.ok) return;
    const s = await response.json();
    apply(entry, {
      status: s.status,
      progress: s.progress,
      message: s.message,
      results: s.result_urls || (s.result_url ? [s.result_url] : []),
      error: s.error,
    });
    if (isCurrent(entry) && TERMINAL.has(s.status)) renderResult(entry);
  } catch {
    /* offline for a moment: the next poll tries again */
  }
}

function setStatus(text) {
  $("status").classList.remove("idle");
  // A live region: write only changes, or a screen reader repeats itself.
  if ($("status").textContent !== text) $("status").textContent = text;
}

function renderJob(entry) {
  const running = !TERMINAL.has(entry.status) && entry.status !== "expired";
  $("cancel").hidden = !running;
  $("job-badge").hidden = false;
  $("job-badge").textContent = entry.status;
  $("job-badge").className = `badge ${entry.status}`;
  const bar = $("progress");
  bar.hidden = !running;
  bar.setAttribute("aria-valuenow", String(entry.progress || 0));
  bar.firstElementChild.style.width = `${entry.progress || 0}%`;
  bar.classList.toggle("indeterminate", running && entry.status === "pending");
  if (!running) $("preview").hidden = true;

  const seconds = Math.max(0, Math.round((Date.now() - entry.created) / 1000));
  $("elapsed").textContent = running ? `${seconds} s` : "";
  let text;
  if (entry.status === "pending" && entry.queue) {
    const q = entry.queue;
    const place = q.queue_position === 0 ? "next in line" : `${q.queue_position} ahead`;
    text = `Queued · ${place}${q.eta_s != null ? ` · about ${Math.round(q.eta_s)} s` : ""}`;
  } else if (entry.status === "pending") {
    text = entry.message && entry.message.startsWith("Queued") ? entry.message : "Waiting for a worker…";
  } else if (entry.status === "processing") {
    text = entry.message || "Rendering";
  } else if (entry.status === "completed") {
    text = "Done.";
  } else if (entry.status === "failed") {
    text = `Failed: ${entry.error || entry.message}`;
  } else if (entry.status === "canceled") {
    text = "Canceled.";
  } else {
    text = "This job has expired on the server.";
  }
  setStatus(text);
  $("job-meta").textContent = `${entry.model} · ${TASK_LABELS[entry.task] || entry.task} · ${entry.id}`;
}

function renderResult(entry) {
  const box = $("result");
  box.replaceChildren();
  box.classList.remove("grid");
  if (entry.status !== "completed") return;
  const urls = entry.results || [];
  const video = VIDEO_TASKS.has(entry.task) || urls.some((u) => /\.mp4(\?|$)/.test(u));
  const label = entry.prompt || "result";
  if (video) {
    for (const url of urls) {
      const player = el("video", { src: url, controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
      player.setAttribute("aria-label", `Video: ${label}`);
      box.append(el("figure", { className: "shot" }, player, caption(url, "Download video")));
    }
    return;
  }
  const grid = urls.length > 1;
  box.classList.toggle("grid", grid);
  urls.forEach((url, i) => {
    const name = grid ? entry.angles?.[i] || `view ${i + 1}` : null;
    const img = el("img", { src: url, alt: name ? `${label} — ${name}` : label, decoding: "async" });
    const link = el("a", { href: url, target: "_blank", rel: "noopener", className: "shot-link" }, img);
    box.append(el("figure", { className: "shot" }, link, caption(url, "Download", name)));
  });
}

function caption(url, text, name) {
  const download = el("a", { href: url, download: "", textContent: text, className: "download" });
  return el("figcaption", {}, name ? el("span", { textContent: name }) : null, download);
}

// --- history ------------------------------------------------------------------------------

function historyItem(entry) {
  const thumb = el("span", { className: "thumb", ariaHidden: "true" });
  if (entry.status === "completed" && entry.results?.length && !VIDEO_TASKS.has(entry.task)) {
    thumb.append(el("img", { src: entry.results[0], alt: "", loading: "lazy" }));
  } else {
    thumb.textContent = VIDEO_TASKS.has(entry.task) ? "▶" : "◐";
  }
  const when = new Date(entry.created).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const button = el(
    "button",
    { type: "button", className: "hist" },
    thumb,
    el(
      "span",
      { className: "hist-text" },
      el("span", { className: "hist-prompt", textContent: entry.prompt || "(no prompt)" }),
      el("span", { className: "hist-meta", textContent: `${entry.model} · ${entry.task} · ${when}` }),
    ),
    el("span", { className: `badge ${entry.status}`, textContent: entry.status }),
  );
  if (isCurrent(entry)) button.setAttribute("aria-current", "true");
  button.addEventListener("click", () => {
    follow(entry);
    $("stage").focus();
  });
  return el("li", { dataset: { id: entry.id } }, button);
}

function renderHistory() {
  $("history").replaceChildren(...history.map(historyItem));
  $("history-empty").hidden = history.length > 0;
  $("history-clear").hidden = history.length === 0;
}

function renderHistoryItem(entry) {
  const old = document.querySelector(`#history li[data-id="${CSS.escape(entry.id)}"]`);
  if (old) old.replaceWith(historyItem(entry));
}

function pollOthers() {
  for (const entry of history) {
    if (!TERMINAL.has(entry.status) && entry.status !== "expired" && !isCurrent(entry)) refresh(entry);
  }
}

// --- API key panel ------------------------------------------------------------------------

function openKeyPanel(message) {
  $("key-panel").hidden = false;
  $("key-toggle").setAttribute("aria-expanded", "true");
  if (message) $("key-help").textContent = message;
  $("api-key").focus();
}

function wire() {
  $("key-toggle").addEventListener("click", () => {
    const open = $("key-panel").hidden;
    $("key-panel").hidden = !open;
    $("key-toggle").setAttribute("aria-expanded", String(open));
    if (open) $("api-key").focus();
  });
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(KEY_STORE, $("api-key").value.trim());
    $("key-panel").hidden = true;
    $("key-toggle").setAttribute("aria-expanded", "false");
    $("key-toggle").textContent = apiKey() ? "API key ✓" : "API key";
    showFormError("");
    loadModels();
  });
  $("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    $("api-key").value = "";
    $("key-toggle").textContent = "API key";
  });
  if (apiKey()) $("key-toggle").textContent = "API key ✓";

  $("model").addEventListener("change", (e) => selectModel(e.target.value));
  $("compose").addEventListener("submit", generate);
  $("compose").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(e);
  });
  $("cancel").addEventListener("click", cancel);
  for (const id of ["steps", "guidance", "strength"]) $(id).addEventListener("input", syncOutputs);
  $("seed-random").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 2 ** 32));
  });
  $("angle-add").addEventListener("click", addAngle);
  $("angle-custom").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      addAngle();
    }
  });

  const drop = $("drop");
  $("image").addEventListener("change", () => setImage($("image").files[0]));
  $("image-clear").addEventListener("click", () => setImage(null));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file && FORM_TASKS.has(state.task)) setImage(file);
  });

  $("history-clear").addEventListener("click", () => {
    history = history.filter((e) => isCurrent(e) && !TERMINAL.has(e.status));
    saveHistory();
    renderHistory();
  });
}

async function start() {
  wire();
  renderHistory();
  await Promise.all([loadModels(), loadPreviewSupport()]);
  // After a reload: the latest job on the stage (its feed resumes), the others by status.
  if (history.length) follow(history[0]);
  pollOthers();
  setInterval(pollOthers, POLL_MS);
}

start();
