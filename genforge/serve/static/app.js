// The genforge page: pick a model and controls, generate, like images, get more like them, download.
// Plain JavaScript against the JSON API; no build step, nothing loaded from elsewhere. The control inputs
// are built from what GET /v1/models says each model takes (name, type, range or choices, default), so the
// page names no model family and shows a new family's controls without a change here.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { auth: true, models: {}, loadedFor: null, loading: null, current: null, shown: null,
                liked: new Set(), last: null };
const NO_KEY = "Paste an API key above to list the models (make one with: genforge keys create --role generator).";

function key() { return $("key").value.trim(); }

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.auth && key()) h["Authorization"] = "Bearer " + key();
  return h;
}

function say(text) { $("status").textContent = text; }
function fail(text) { $("error").textContent = text; say(""); }
function empty(text) { $("empty").textContent = text; $("empty").hidden = !text; }

async function call(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

// The model list for the key now in the field; one request at a time per key, again on every submit.
function loadModels() {
  const wanted = state.auth ? key() : "";
  if (state.auth && !wanted) {
    state.models = {};
    state.loadedFor = null;
    $("model").replaceChildren();
    modelChanged();
    empty(NO_KEY);
    return Promise.resolve(false);
  }
  if (state.loading && state.loading.key === wanted) return state.loading.promise;
  const promise = (async () => {
    try {
      const models = (await (await call("GET", "/v1/models")).json()).models;
      if (state.auth && key() !== wanted) return false;  // the key changed meanwhile: that load wins
      const previous = $("model").value;
      state.models = Object.fromEntries(models.map((m) => [m.name, m]));
      state.loadedFor = wanted;
      $("model").replaceChildren(...models.map((m) => new Option(`${m.name} (${m.recipe})`, m.name)));
      if (previous in state.models) $("model").value = previous;
      modelChanged();
      $("error").textContent = "";
      empty(models.length ? "" : "This server serves no models: start it with genforge serve RUN_DIR.");
      say(models.length + " model" + (models.length === 1 ? "" : "s"));
      return models.length > 0;
    } catch (e) {
      state.models = {};
      state.loadedFor = null;
      $("model").replaceChildren();
      modelChanged();
      fail(state.auth ? "Cannot list models: " + e.message : e.message);
      empty(state.auth ? "Check the API key: it needs the viewer role or above." : "");
      return false;
    } finally {
      if (state.loading && state.loading.promise === promise) state.loading = null;
    }
  })();
  state.loading = { key: wanted, promise };
  return promise;
}

// ------------------------------------------------------------------------------------------ controls

function niceStep(low, high) { return 10 ** Math.floor(Math.log10((high - low) / 100)); }

function digits(step) { return Math.max(0, -Math.floor(Math.log10(step))); }

// One input per declared control: a select for choices, a number box for integers, a slider for floats.
function controlInput(c) {
  const label = document.createElement("label");
  label.id = "control-" + c.name;
  label.title = c.help;
  const name = document.createElement("span");
  name.textContent = c.name[0].toUpperCase() + c.name.slice(1) + " ";
  label.append(name);
  let input;
  if (c.choices) {
    input = document.createElement("select");
    input.replaceChildren(...c.choices.map((v) => new Option(v, v)));
    if (c.default !== null) input.value = c.default;
    label.append(input);
  } else if (c.type === "int") {
    input = document.createElement("input");
    Object.assign(input, { type: "number", min: c.min, max: c.max, step: 1 });
    if (c.default !== null) input.value = c.default; else input.placeholder = "model's own";
    label.append(input);
  } else {
    const step = niceStep(c.min, c.max);
    input = document.createElement("input");
    Object.assign(input, { type: "range", min: c.min_exclusive ? c.min + step : c.min, max: c.max, step });
    input.value = c.default !== null ? c.default : c.max;
    const shown = document.createElement("output");
    // the label reads the slider's own value, after the browser has clamped and snapped it to the range
    const update = () => { shown.textContent = Number(input.value).toFixed(digits(step)); };
    input.addEventListener("input", update);
    update();
    name.append(shown);
    label.append(input);
  }
  input.name = c.name;
  input.dataset.start = input.value;  // sent only when changed: else the model's own default applies
  const note = document.createElement("small");
  note.className = "note";
  note.textContent = c.help;
  label.append(note);
  return label;
}

function controlValues(m) {
  const out = {};
  for (const c of m.control_specs) {
    const input = $("control-" + c.name).querySelector("[name]");
    if (input.value === "" || input.value === input.dataset.start) continue;
    out[c.name] = c.choices ? input.value : Number(input.value);
  }
  return out;
}

function modelChanged() {
  const m = state.models[$("model").value];
  $("model-row").hidden = !m;
  $("generate-note").hidden = Boolean(m);
  if (!m) {
    state.current = null;
    $("class-row").hidden = true;
    $("model-controls").replaceChildren();
    return;
  }
  const same = state.current === m.name;  // the list was loaded again: keep the choices already made
  state.current = m.name;
  const shape = m.modality === "series" ? `${m.example_shape[0]} channel(s) x ${m.example_shape[1]} samples`
    : `${m.example_shape[1]}x${m.example_shape[2]}`;
  $("model-info").textContent = `${m.family}, ${m.modality}, ${shape}, weights ${(m.weights_sha256 || "").slice(0, 12)}`;
  $("class-row").hidden = !m.num_classes;
  const chosen = $("class").value;
  const options = [new Option("all, in turn", "")];
  (m.classes || []).forEach((name, i) => options.push(new Option(`${i}: ${name}`, String(i))));
  $("class").replaceChildren(...options);
  if (same) $("class").value = chosen;
  if (!same) $("model-controls").replaceChildren(...m.control_specs.map(controlInput));
}

// ------------------------------------------------------------------------------------------ results

// One series sample as a canvas: up to 4 channels stacked, each scaled to its own band.
const SERIES_CHANNELS = 4;
function seriesCanvas(sample, names, label) {
  const canvas = document.createElement("canvas");
  const shown = sample.slice(0, SERIES_CHANNELS);
  canvas.width = 240;
  canvas.height = 36 * shown.length + 4;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", label);
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, canvas.width, canvas.height);
  shown.forEach((values, ch) => {
    const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
    const top = 2 + 36 * ch;
    g.strokeStyle = "#ddd";
    g.strokeRect(0.5, top + 0.5, canvas.width - 1, 34);
    g.strokeStyle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"][ch];
    g.beginPath();
    values.forEach((v, t) => {
      const px = (t / Math.max(1, values.length - 1)) * (canvas.width - 2) + 1;
      const py = top + 33 - ((v - lo) / span) * 32;
      if (t === 0) g.moveTo(px, py); else g.lineTo(px, py);
    });
    g.stroke();
    g.fillStyle = "#555";
    g.font = "9px sans-serif";
    g.fillText((names && names[ch]) || `channel ${ch}`, 3, top + 10);
  });
  return canvas;
}

function show(result, caption) {
  state.shown = result;
  state.liked.clear();
  const grid = $("grid");
  const m = state.models[result.model];
  const like = (el, i) => {
    el.dataset.index = i;
    el.title = "click to like";
    el.addEventListener("click", () => toggleLike(el));
    return el;
  };
  if (result.series) {
    grid.replaceChildren(...result.series.map((sample, i) => like(seriesCanvas(sample, result.channel_names,
      `series ${i}` + (result.classes ? `, class ${result.classes[i]}` : "")), i)));
    $("caption").textContent = caption;
    $("download").disabled = false;
    $("feedback").hidden = false;
    updateLiked();
    return;
  }
  const side = m.example_shape.length === 3 ? Math.max(64, Math.min(160, 4 * m.example_shape[2])) : 160;
  grid.replaceChildren(...result.images.map((b64, i) => {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    img.width = side;
    img.height = side;
    img.alt = `image ${i}` + (result.classes ? `, class ${result.classes[i]}` : "");
    img.dataset.index = i;
    img.title = "click to like";
    img.addEventListener("click", () => toggleLike(img));
    if (!result.audio) return img;
    // audio models: the clip's spectrogram (click to like, as an image) above a player of the clip
    const tile = document.createElement("figure");
    tile.className = "clip";
    const player = document.createElement("audio");
    player.controls = true;
    player.src = "data:audio/wav;base64," + result.audio[i];
    player.title = img.alt;
    tile.append(img, player);
    return tile;
  }));
  $("caption").textContent = caption;
  $("download").disabled = false;
  $("feedback").hidden = false;
  updateLiked();
}

function toggleLike(img) {
  const i = Number(img.dataset.index);
  if (state.liked.has(i)) state.liked.delete(i); else state.liked.add(i);
  img.classList.toggle("liked", state.liked.has(i));
  updateLiked();
}

function updateLiked() {
  $("liked-count").textContent = state.liked.size;
  $("more").disabled = state.liked.size === 0;
}

async function run(path, body, caption) {
  $("error").textContent = "";
  say("generating...");
  try {
    const result = await (await call("POST", path, body)).json();
    state.last = { path, body: { ...body, seed: result.seed } };  // the seed makes a download repeat it exactly
    show(result, caption(result));
    say("");
  } catch (e) {
    fail(e.message);
  }
}

async function generate(event) {
  event.preventDefault();
  if (state.auth && !key()) { empty(NO_KEY); return fail("no API key: paste one first"); }
  say("loading models...");
  await loadModels();  // read again on every submit: a key pasted just now, or a model reloaded on the server
  const m = state.models[$("model").value];
  if (!m) return fail(Object.keys(state.models).length ? "no model selected" : "no models to generate from");
  const body = { model: m.name, n: Number($("n").value), format: "base64", ...controlValues(m) };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (m.num_classes && $("class").value !== "") body.class = Number($("class").value);
  run("/v1/generate", body, (r) => `${r.n} images from ${r.model}, seed ${r.seed}`);
}

function more() {
  const shown = state.shown;
  const liked = [...state.liked].sort((a, b) => a - b).map((i) => (
    shown.classes ? { z: shown.latents[i], class: shown.classes[i] } : { z: shown.latents[i] }));
  run("/v1/feedback", { model: shown.model, liked, n: shown.n, radius: Number($("radius").value), format: "base64" },
      (r) => `${r.n} images like the ${liked.length} you liked, from ${r.model}, seed ${r.seed}`);
}

async function download() {
  if (!state.last) return;
  try {
    const response = await call("POST", state.last.path, { ...state.last.body, format: "png" });
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = `genforge-${state.last.body.model}-seed${state.last.body.seed}.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    fail("Download failed: " + e.message);
  }
}

async function start() {
  try {
    state.auth = (await (await fetch("/healthz")).json()).auth;
  } catch (e) { /* keep asking for a key */ }
  $("key-row").hidden = !state.auth;
  $("key").value = sessionStorage.getItem("genforge-key") || "";
  let pause = null;
  // "input", not only "change": a pasted key lists the models at once, without leaving the field first
  $("key").addEventListener("input", () => {
    sessionStorage.setItem("genforge-key", key());
    clearTimeout(pause);
    pause = setTimeout(loadModels, 250);
  });
  $("model").addEventListener("change", modelChanged);
  $("radius").addEventListener("input", () => { $("radius-value").textContent = Number($("radius").value).toFixed(2); });
  $("radius-value").textContent = Number($("radius").value).toFixed(2);
  $("controls").addEventListener("submit", generate);
  $("more").addEventListener("click", more);
  $("download").addEventListener("click", download);
  modelChanged();
  loadModels();
}

document.addEventListener("DOMContentLoaded", start);
