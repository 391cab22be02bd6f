"use strict";
// app.js: starts the page: tabs, the export toolbar every view shares (JSON / SVG / PNG / copy as Python),
// and GET /api/model, the only request made at load.

const VIEWS = [lensView, attentionView, patchingView, steeringView, ablationView, moeView, weightsView];
const VIEWS_BY_NAME = new Map(VIEWS.map((view) => [view.name, view]));

// ---------------------------------------------------------------------------------------------------------
// Tabs.

function tabFor(name) {
  return document.querySelector(`button.tab[data-view="${name}"]`);
}

/** Show one view; onShow (the view's lazy look-ups) runs unless told not to (before the model is known). */
function showView(name, runOnShow = true) {
  const view = VIEWS_BY_NAME.get(name);
  if (!view || tabFor(name).disabled) return;
  for (const tab of document.querySelectorAll("button.tab")) {
    const active = tab.dataset.view === name;
    tab.classList.toggle("active", active);
    tab.setAttribute("aria-selected", String(active));
  }
  for (const section of document.querySelectorAll("section.view")) setShown(section, section.id === `view-${name}`);
  hideTooltip();
  // Remember the tab in the fragment (the query string, which may hold the token, stays as it is).
  history.replaceState(null, "", `${location.pathname}${location.search}#${name}`);
  if (runOnShow && view.onShow) view.onShow();
}

function initialViewName() {
  const fromHash = location.hash.slice(1);
  return VIEWS_BY_NAME.has(fromHash) ? fromHash : "lens";
}

function bindTabs() {
  for (const tab of document.querySelectorAll("button.tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  window.addEventListener("hashchange", () => showView(initialViewName())); // links and back / forward
}

// ---------------------------------------------------------------------------------------------------------
// Exports.

function downloadBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename, class: "hidden-link" });
  document.body.append(link);
  link.click();
  link.remove();
  // Revoke later: the download may not have read the blob yet when click() returns.
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function requireResponse(view) {
  if (view.lastResponse === null || view.lastResponse === undefined) {
    throw new ApiError(`nothing to export yet: run the ${view.name} view first`);
  }
}

function exportableSvg(view) {
  const svg = view.mainSvg();
  if (!svg || !(Number(svg.getAttribute("width")) > 0) || !svg.querySelector("*")) {
    throw new ApiError(`nothing to export yet: run the ${view.name} view first`);
  }
  return svg;
}

/** A standalone SVG document: the chart with its namespace and a white background. */
function serialiseSvg(svg) {
  const copy = svg.cloneNode(true);
  copy.setAttribute("xmlns", SVG_NS);
  copy.removeAttribute("class");
  const background = svgEl("rect", { x: 0, y: 0, width: "100%", height: "100%", fill: "#ffffff" });
  copy.insertBefore(background, copy.firstChild);
  return new XMLSerializer().serializeToString(copy);
}

function downloadJson(view) {
  requireResponse(view);
  const text = JSON.stringify(view.lastResponse, null, 2);
  downloadBlob(new Blob([text], { type: "application/json" }), `mechscope-${view.name}.json`);
}

function downloadSvg(view) {
  const text = serialiseSvg(exportableSvg(view));
  downloadBlob(new Blob([text], { type: "image/svg+xml" }), `mechscope-${view.name}.svg`);
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.addEventListener("load", () => resolve(image));
    image.addEventListener("error", () => reject(new ApiError("the browser could not draw the chart as an image")));
    image.src = url;
  });
}

/** The SVG drawn on a canvas at twice its size. */
async function downloadPng(view) {
  const svg = exportableSvg(view);
  const width = Number(svg.getAttribute("width"));
  const height = Number(svg.getAttribute("height"));
  const url = URL.createObjectURL(new Blob([serialiseSvg(svg)], { type: "image/svg+xml" }));
  try {
    const image = await loadImage(url);
    const canvas = el("canvas", { width: width * 2, height: height * 2 });
    const context = canvas.getContext("2d");
    context.scale(2, 2);
    context.drawImage(image, 0, 0, width, height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    if (!blob) throw new ApiError("the browser could not encode the PNG");
    downloadBlob(blob, `mechscope-${view.name}.png`);
  } finally {
    URL.revokeObjectURL(url);
  }
}

async function copyPython(view) {
  const request = view.lastRequest ?? view.currentRequest();
  const answer = await api.post("/api/python", { view: view.name, request });
  const pre = document.querySelector(`#view-${view.name} pre.python-code`);
  pre.textContent = answer.code;
  setShown(pre, true);
  let copied = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(answer.code);
      copied = true;
    }
  } catch (error) {
    // No clipboard permission (e.g. a headless browser): the code is on the page anyway.
  }
  setStatus(copied ? "Python code copied to the clipboard" : "Python code shown below (the clipboard is not available)");
}

const TOOLBAR_ACTIONS = [
  ["download-json", "JSON", downloadJson, "JSON downloaded"],
  ["download-svg", "SVG", downloadSvg, "SVG downloaded"],
  ["download-png", "PNG", downloadPng, "PNG downloaded"],
  ["copy-python", "Copy as Python", copyPython, null],
];

/** Every view's toolbar gets the same four buttons (the markup holds only the empty toolbar). */
function bindToolbars() {
  for (const view of VIEWS) {
    const toolbar = byId(`view-${view.name}`).querySelector(".toolbar");
    for (const [className, label, action, done] of TOOLBAR_ACTIONS) {
      const button = el("button", { type: "button", class: className }, label);
      toolbar.append(button);
      button.addEventListener("click", async () => {
        try {
          await action(view);
          if (done) setStatus(`${done}: mechscope-${view.name}`);
        } catch (error) {
          reportError(error);
        }
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The model.

function describeModel(model) {
  const parts = [model.family, `${model.n_layers} layers`, `${model.n_heads} heads`, `d_model ${model.d_model}`, `vocab ${model.vocab_size}`];
  if (model.is_moe) parts.push(`${model.n_experts} experts`);
  return parts.filter(Boolean).join(" \u00b7 ");
}

function applyModel(model) {
  byId("model-name").textContent = model.name;
  byId("model-name").title = model.source || model.name;
  byId("model-meta").textContent = describeModel(model);
  document.title = `mechscope \u2014 ${model.name}`;
  if (!model.is_moe) {
    const tab = tabFor("moe");
    tab.disabled = true;
    tab.title = `${model.name} is a dense model: it has no experts to route`;
    if (tab.classList.contains("active")) showView("lens");
  }
  for (const view of VIEWS) if (view.onModel) view.onModel(model);
  setStatus(`ready: ${model.name}`);
}

async function start() {
  bindTabs();
  bindToolbars();
  for (const view of VIEWS) view.init();
  showView(initialViewName(), false);
  const model = await withStatus("loading the model's description", () => api.get("/api/model"));
  if (!model) {
    byId("model-name").textContent = "model unavailable";
    return;
  }
  applyModel(model);
  const active = document.querySelector("button.tab.active");
  if (active) showView(active.dataset.view);
}

start();
