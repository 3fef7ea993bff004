// The genforge page: pick a model and controls, generate, like images, get more like them, download.
// Plain JavaScript against the JSON API; no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { auth: true, models: {}, current: null, shown: null, liked: new Set(), last: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (state.auth && key) h["Authorization"] = "Bearer " + key;
  return h;
}

function say(text) { $("status").textContent = text; }
function fail(text) { $("error").textContent = text; say(""); }

async function call(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

async function loadModels() {
  $("error").textContent = "";
  try {
    const models = (await (await call("GET", "/v1/models")).json()).models;
    const previous = $("model").value;
    state.models = Object.fromEntries(models.map((m) => [m.name, m]));
    $("model").replaceChildren(...models.map((m) => new Option(`${m.name} (${m.recipe})`, m.name)));
    if (previous in state.models) $("model").value = previous;
    modelChanged();
    say(models.length + " model" + (models.length === 1 ? "" : "s"));
  } catch (e) {
    fail(state.auth ? "Cannot list models: " + e.message : e.message);
  }
}

function modelChanged() {
  const m = state.models[$("model").value];
  if (!m) return;
  const same = state.current === m.name;  // the list was loaded again: keep the choices already made
  state.current = m.name;
  $("model-info").textContent = `${m.family}, ${m.image_shape[1]}x${m.image_shape[2]}, weights ${(m.weights_sha256 || "").slice(0, 12)}`;
  $("class-row").hidden = !m.num_classes;
  const chosen = $("class").value;
  const options = [new Option("all, in turn", "")];
  (m.classes || []).forEach((name, i) => options.push(new Option(`${i}: ${name}`, String(i))));
  $("class").replaceChildren(...options);
  if (same) $("class").value = chosen;
  $("noise-row").hidden = !(m.family === "gan" || m.family === "vae");
  if (same) return;
  const noise = $("noise");
  if (m.family === "gan") {
    $("noise-name").textContent = "Truncation";
    Object.assign(noise, { min: 0.05, max: 1, step: 0.05 });
  } else {
    $("noise-name").textContent = "Temperature";
    Object.assign(noise, { min: 0.1, max: 2, step: 0.05 });
  }
  noise.value = 1;
  $("noise-value").textContent = Number(noise.value).toFixed(2);
}

function show(result) {
  state.shown = result;
  state.liked.clear();
  const grid = $("grid");
  const m = state.models[result.model];
  const side = Math.max(64, Math.min(160, 4 * m.image_shape[2]));
  grid.replaceChildren(...result.images.map((b64, i) => {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    img.width = side;
    img.height = side;
    img.alt = `image ${i}` + (result.classes ? `, class ${result.classes[i]}` : "");
    img.dataset.index = i;
    img.title = "click to like";
    img.addEventListener("click", () => toggleLike(img));
    return img;
  }));
  $("caption").textContent = `${result.n} images from ${result.model}, seed ${result.seed}`;
  $("download").disabled = false;
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

async function run(path, body) {
  $("error").textContent = "";
  say("generating...");
  try {
    const result = await (await call("POST", path, body)).json();
    state.last = { path, body: { ...body, seed: result.seed } };  // the seed makes a download repeat it exactly
    show(result);
    say("");
  } catch (e) {
    fail(e.message);
  }
}

function generate(event) {
  event.preventDefault();
  const m = state.models[$("model").value];
  if (!m) return fail("no model selected");
  const body = { model: m.name, n: Number($("n").value), format: "base64" };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (m.num_classes && $("class").value !== "") body.class = Number($("class").value);
  const noise = Number($("noise").value);
  if (m.family === "gan" && noise < 1) body.truncation = noise;
  if (m.family === "vae" && noise !== 1) body.temperature = noise;
  run("/v1/generate", body);
}

function more() {
  const shown = state.shown;
  const liked = [...state.liked].sort((a, b) => a - b).map((i) => (
    shown.classes ? { z: shown.latents[i], class: shown.classes[i] } : { z: shown.latents[i] }));
  run("/v1/feedback", { model: shown.model, liked, n: shown.n, radius: Number($("radius").value), format: "base64" });
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
  $("key").addEventListener("change", () => {
    sessionStorage.setItem("genforge-key", $("key").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", modelChanged);
  $("noise").addEventListener("input", () => { $("noise-value").textContent = Number($("noise").value).toFixed(2); });
  $("radius").addEventListener("input", () => { $("radius-value").textContent = Number($("radius").value).toFixed(2); });
  $("controls").addEventListener("submit", generate);
  $("more").addEventListener("click", more);
  $("download").addEventListener("click", download);
  if (!state.auth || $("key").value) loadModels(); else say("enter an API key");
}

document.addEventListener("DOMContentLoaded", start);
