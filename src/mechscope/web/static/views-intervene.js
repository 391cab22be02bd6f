"use strict";
// views-intervene.js: the views that change the model's computation: activation patching and ablation (long
// jobs with progress and cancel) and steering. Same view interface as in views-inspect.js.

// ---------------------------------------------------------------------------------------------------------
// One long job at a time per view: run button, cancel button and <progress> wired to startJob.

class JobControl {
  constructor({ kind, label, runButton, cancelButton, progress }) {
    Object.assign(this, { kind, label, runButton, cancelButton, progress });
    this.job = null;
    this.cancelRequested = false;
    cancelButton.addEventListener("click", () => this.cancel());
  }

  get running() {
    return this.runButton.disabled;
  }

  setRunning(running) {
    this.runButton.disabled = running;
    this.cancelButton.disabled = !running;
  }

  /** Resolves to {state: "done", result} or {state: "cancelled"}; undefined when the job failed (shown in #status). */
  async run(request) {
    if (this.running) return undefined;
    this.setRunning(true);
    this.cancelRequested = false;
    showProgress(this.progress, { done: 0, total: null });
    try {
      const outcome = await withStatus(this.label, async () => {
        this.job = await startJob(this.kind, request, (progress) => this.onProgress(progress));
        // Cancel clicked while the job was still being created: cancel it now that it has an id.
        if (this.cancelRequested) this.requestCancel();
        return this.job.finished;
      });
      if (outcome && outcome.state === "cancelled") setStatus(`${this.label} cancelled`);
      if (outcome && outcome.state === "done") showProgress(this.progress, { done: 1, total: 1 });
      else showProgress(this.progress, { done: 0, total: 1 });
      return outcome;
    } finally {
      this.job = null;
      this.setRunning(false);
    }
  }

  onProgress(progress) {
    showProgress(this.progress, progress);
    const total = isNumber(progress.total) ? progress.total : "?";
    setStatus(`${this.label}\u2026 ${progress.done ?? 0} / ${total}`, "busy");
  }

  cancel() {
    this.cancelButton.disabled = true;
    this.cancelRequested = true;
    if (this.job) this.requestCancel();
  }

  async requestCancel() {
    try {
      await this.job.cancel();
    } catch (error) {
      // The job may have finished in the meantime; its stream still ends the run either way.
      if (!(error instanceof ApiError && (error.status === 404 || error.status === 409))) reportError(error);
    }
  }
}

function showCancelled(svg, summary) {
  showEmptyChart(svg, "cancelled \u2014 run again to see the result");
  summary.textContent = "cancelled";
}

/** A token cell for detail tables: the top-1 token and its probability, the runners-up in the title. */
function topTokenCell(prediction, className) {
  const top = (prediction && prediction.top) || [];
  if (!top.length) return { text: "\u2013" };
  const best = top[0];
  const cell = el(
    "span",
    { class: "token-cell", title: top.map((entry) => `${displayToken(entry.token)} ${formatProb(entry.prob)}`).join("\n") },
    el("span", { class: "token" }, displayToken(best.token)),
    " ",
    el("span", { class: "prob" }, formatProb(best.prob)),
  );
  return el("td", { class: className }, cell);
}

// ---------------------------------------------------------------------------------------------------------
// Activation patching.

const patchingView = {
  name: "patching",
  lastRequest: null,
  lastResponse: null,
  jobs: null,

  init() {
    this.jobs = new JobControl({
      kind: "patch",
      label: "activation patching",
      runButton: byId("patch-run"),
      cancelButton: byId("patch-cancel"),
      progress: byId("patch-progress"),
    });
    onSubmit("patch-form", () => this.run());
  },

  currentRequest() {
    return {
      clean: byId("patch-clean").value,
      corrupted: byId("patch-corrupted").value,
      correct: byId("patch-correct").value,
      wrong: byId("patch-wrong").value,
      site: "resid_post",
    };
  },

  mainSvg: () => byId("patch-heatmap"),

  async run() {
    const request = this.currentRequest();
    const outcome = await this.jobs.run(request);
    if (!outcome) return;
    if (outcome.state === "cancelled") {
      showCancelled(byId("patch-heatmap"), byId("patch-summary"));
      return;
    }
    this.lastRequest = request;
    this.lastResponse = outcome.result;
    clear(byId("patch-detail"));
    drawPatchHeatmap(outcome.result, (layer, position, rect) => this.showCell(layer, position, rect));
    byId("patch-summary").textContent = patchSummary(outcome.result);
  },

  async showCell(layer, position, rect) {
    markSelected(byId("patch-heatmap"), rect);
    const { clean, corrupted, site } = this.lastRequest;
    const request = { clean, corrupted, layer, position, site, top_k: 3 };
    const ticket = takeTicket("patch-cell");
    const runs = await withStatus(`patching layer ${layer} at position ${position}`, () => api.post("/api/patch/cell", request));
    if (!runs || !ticket.isCurrent()) return;
    const token = this.lastResponse.tokens[position];
    drawPatchDetail(byId("patch-detail"), runs, { layer, position, token });
  },
};

function drawPatchHeatmap(result, onCell) {
  const rows = layerRowsTopDown(result.layers);
  const effects = result.effects.flat();
  drawHeatmap(byId("patch-heatmap"), {
    rows,
    columns: tokenColumns(result.tokens),
    rowAxis: "layer",
    cellWidth: result.tokens.length > 16 ? 52 : 64,
    cellHeight: 26,
    scale: divergingScale(Math.max(1, largestMagnitude(effects)), "restoration (0 none, 1 full)"),
    cell: (r, pos) => {
      const { layer, index } = rows[r];
      const effect = result.effects[index][pos];
      return {
        value: effect,
        text: formatCompact(effect),
        data: { "data-layer": layer, "data-pos": pos, "data-effect": effect },
        tooltip: () => ({
          title: `layer ${layer} \u00b7 position ${pos} ${displayToken(result.tokens[pos])}`,
          rows: [["restoration", formatNumber(effect, 4)], ["", "click for the downstream effect"]],
        }),
      };
    },
    onCellClick: (r, pos, rect) => onCell(rows[r].layer, pos, rect),
  });
}

function patchSummary(result) {
  const partial = result.partial ? " (partial: the job stopped early)" : "";
  return (
    `${result.metric}: clean ${formatNumber(result.clean_metric)}, corrupted ${formatNumber(result.corrupted_metric)}${partial}. ` +
    "Each cell patches the clean run into the corrupted one at that layer and position; click one."
  );
}

/** runs = [clean, corrupted, patched] LensResults at the last position: the top token per layer of each. */
function drawPatchDetail(container, runs, { layer, position, token }) {
  const [clean, corrupted, patched] = runs;
  const layers = clean.layer_predictions.map((prediction) => prediction.layer);
  const byLayer = (run) => new Map(((run && run.layer_predictions) || []).map((prediction) => [prediction.layer, prediction]));
  const [cleanByLayer, corruptedByLayer, patchedByLayer] = [clean, corrupted, patched].map(byLayer);
  const topOf = (prediction) => prediction && prediction.top && prediction.top[0] && prediction.top[0].token;
  const table = el("table", { class: "data detail-table" });
  fillTable(
    table,
    ["layer", "clean top", "corrupted top", "patched top"],
    layers.map((l) => {
      const patchedTop = topOf(patchedByLayer.get(l));
      // Highlight where the patch changed the corrupted run's prediction (and whether it restored the clean one).
      const changed = patchedTop !== topOf(corruptedByLayer.get(l));
      const restored = changed && patchedTop === topOf(cleanByLayer.get(l));
      return {
        attrs: { "data-layer": l },
        cells: [
          { text: String(l), header: true },
          topTokenCell(cleanByLayer.get(l)),
          topTokenCell(corruptedByLayer.get(l)),
          topTokenCell(patchedByLayer.get(l), restored ? "restored" : changed ? "changed" : null),
        ],
      };
    }),
  );
  clear(container).append(
    el("h3", {}, `Patched layer ${layer} at position ${position} (${displayToken(token)}): top prediction at the last position, per layer`),
    table,
  );
}

// ---------------------------------------------------------------------------------------------------------
// Ablation.

const ablationView = {
  name: "ablation",
  lastRequest: null,
  lastResponse: null,
  jobs: null,

  init() {
    this.jobs = new JobControl({
      kind: "ablate",
      label: "ablation",
      runButton: byId("ablate-run"),
      cancelButton: byId("ablate-cancel"),
      progress: byId("ablate-progress"),
    });
    onSubmit("ablate-form", () => this.run());
  },

  currentRequest() {
    return {
      prompt: byId("ablate-prompt").value,
      target: byId("ablate-target").value,
      component: byId("ablate-component").value,
      method: byId("ablate-method").value,
    };
  },

  mainSvg: () => byId("ablate-heatmap"),

  async run() {
    const request = this.currentRequest();
    const outcome = await this.jobs.run(request);
    if (!outcome) return;
    if (outcome.state === "cancelled") {
      showCancelled(byId("ablate-heatmap"), byId("ablate-summary"));
      return;
    }
    this.lastRequest = request;
    this.lastResponse = outcome.result;
    clear(byId("ablate-detail"));
    drawAblationHeatmap(outcome.result, (effect, rect) => {
      markSelected(byId("ablate-heatmap"), rect);
      drawAblationDetail(byId("ablate-detail"), outcome.result, effect);
    });
    byId("ablate-summary").textContent = ablationSummary(outcome.result);
  },
};

function componentName(effect) {
  return effect.index === null || effect.index === undefined ? `${effect.component} ${effect.layer}` : `${effect.component} ${effect.layer}.${effect.index}`;
}

/** Rows = layers (last on top); columns = heads for head ablation, one column for mlp / attn. */
function drawAblationHeatmap(result, onCell) {
  const effects = result.effects;
  const layers = [...new Set(effects.map((effect) => effect.layer))].sort((a, b) => a - b);
  const indexes = [...new Set(effects.map((effect) => effect.index ?? null))].sort((a, b) => (a ?? -1) - (b ?? -1));
  const lookup = new Map(effects.map((effect) => [`${effect.layer}:${effect.index ?? ""}`, effect]));
  const rows = layerRowsTopDown(layers);
  const columns = indexes.map((index) => ({ label: index === null ? result.component : `head ${index}`, index }));
  drawHeatmap(byId("ablate-heatmap"), {
    rows,
    columns,
    rowAxis: "layer",
    cellWidth: 64,
    cellHeight: 26,
    scale: divergingScale(largestMagnitude(effects.map((effect) => effect.delta)) || 1, `change in ${result.metric} when ablated`),
    cell: (r, c) => {
      const effect = lookup.get(`${rows[r].layer}:${columns[c].index ?? ""}`);
      if (!effect) return null;
      return {
        value: effect.delta,
        text: formatCompact(effect.delta),
        data: { "data-layer": effect.layer, "data-index": effect.index ?? "", "data-delta": effect.delta },
        tooltip: () => ({
          title: componentName(effect),
          rows: [["ablated", formatProb(effect.metric)], ["change", formatSigned(effect.delta, 4)]],
        }),
      };
    },
    onCellClick: (r, c, rect) => onCell(lookup.get(`${rows[r].layer}:${columns[c].index ?? ""}`), rect),
  });
}

function ablationSummary(result) {
  const partial = result.partial ? " (partial: the job stopped early)" : "";
  return `${result.metric} unablated: ${formatProb(result.clean_metric)}; each cell ${result.method}-ablates one ${result.component}${partial}. Click a cell.`;
}

function drawAblationDetail(container, result, effect) {
  const relative = result.clean_metric ? ` (${formatSigned((100 * effect.delta) / result.clean_metric, 1)} %)` : "";
  const table = el("table", { class: "data detail-table" });
  fillTable(
    table,
    null,
    [
      ["component", componentName(effect)],
      [`${result.metric} clean`, formatProb(result.clean_metric)],
      [`${result.metric} ablated`, formatProb(effect.metric)],
      ["change", `${formatSigned(effect.delta, 4)}${relative}`],
    ].map(([name, value]) => ({ cells: [{ text: name, header: true }, { text: value, className: "num" }] })),
  );
  clear(container).append(table);
}

// ---------------------------------------------------------------------------------------------------------
// Steering.

const steeringView = {
  name: "steering",
  lastRequest: null,
  lastResponse: null,
  directionsLoaded: false,

  init() {
    onSubmit("steer-direction-form", () => this.makeDirection());
    onSubmit("steer-form", () => this.run());
    byId("steer-upload").addEventListener("change", () => this.uploadDirection());
    const slider = byId("steer-coefficient");
    slider.addEventListener("input", () => this.showCoefficient());
    slider.addEventListener("change", () => {
      this.showCoefficient();
      this.run();
    });
    this.showCoefficient();
  },

  onModel(model) {
    const select = clear(byId("steer-layer"));
    for (let layer = 0; layer < model.n_layers; layer += 1) select.append(el("option", { value: layer }, String(layer)));
    select.value = String(Math.min(1, model.n_layers - 1));
  },

  async onShow() {
    if (this.directionsLoaded) return;
    this.directionsLoaded = true;
    await this.refreshDirections(null);
  },

  showCoefficient() {
    byId("steer-coefficient-value").textContent = byId("steer-coefficient").value;
  },

  /** Reload the direction list; select `selectId`, else keep the current choice, else the newest. */
  async refreshDirections(selectId) {
    const directions = await withStatus("steering directions", () => api.get("/api/directions"));
    if (!directions) return;
    const select = byId("steer-direction");
    const previous = select.value;
    clear(select);
    if (!directions.length) select.append(el("option", { value: "" }, "no direction yet: make or upload one"));
    for (const direction of directions) {
      const text = `${direction.name} \u00b7 layer ${direction.layer} \u00b7 ${direction.method} \u00b7 norm ${formatNumber(direction.norm, 2)}`;
      select.append(el("option", { value: direction.id }, text));
    }
    const ids = directions.map((direction) => String(direction.id));
    const wanted = [selectId, previous].find((id) => id !== null && id !== undefined && ids.includes(String(id)));
    select.value = wanted !== undefined ? String(wanted) : ids.length ? ids[ids.length - 1] : "";
  },

  async makeDirection() {
    const request = {
      positive: parseLines(byId("steer-positive").value),
      negative: parseLines(byId("steer-negative").value),
      layer: Number(byId("steer-layer").value),
    };
    if (!request.positive.length || !request.negative.length) {
      setStatus("give at least one positive and one negative prompt, one per line", "error");
      return;
    }
    const direction = await withStatus("contrast direction", () => api.post("/api/directions/contrast", request));
    if (direction) await this.afterNewDirection(direction);
  },

  async uploadDirection() {
    const input = byId("steer-upload");
    const file = input.files && input.files[0];
    if (!file) return;
    const direction = await withStatus(`uploading ${file.name}`, async () =>
      api.upload(`/api/directions/upload?name=${encodeURIComponent(file.name)}`, await file.arrayBuffer()),
    );
    input.value = ""; // so choosing the same file again fires change again
    if (direction) await this.afterNewDirection(direction);
  },

  async afterNewDirection(direction) {
    this.directionsLoaded = true;
    await this.refreshDirections(direction.id);
    setStatus(`direction ${direction.name} ready (layer ${direction.layer}); move the slider or press Generate`);
  },

  currentRequest() {
    return {
      prompt: byId("steer-prompt").value,
      direction: byId("steer-direction").value,
      coefficient: Number(byId("steer-coefficient").value),
      max_new_tokens: 24,
    };
  },

  mainSvg: () => steeringSvg(steeringView.lastRequest, steeringView.lastResponse),

  async run() {
    const request = this.currentRequest();
    if (!request.direction) {
      setStatus("make or upload a direction first", "error");
      return;
    }
    const ticket = takeTicket("steer");
    const result = await withStatus(`steering at coefficient ${request.coefficient}`, () => api.post("/api/steer", request));
    if (!result || !ticket.isCurrent()) return;
    this.lastRequest = request;
    this.lastResponse = result;
    const [plain, steered] = [result.rows[0], result.rows[1] || result.rows[0]];
    byId("steer-plain").textContent = plain.texts[0];
    byId("steer-steered").textContent = steered.texts[0];
    byId("steer-steered-title").textContent = `Steered (coefficient ${steered.coefficient})`;
  },
};

/** Word-wrap text into lines of at most `width` characters. */
function wrapText(text, width) {
  const lines = [];
  let line = "";
  for (const word of String(text).split(/(\s+)/)) {
    if (line && (line + word).length > width && word.trim()) {
      lines.push(line.trimEnd());
      line = word.trimStart();
    } else {
      line += word;
    }
  }
  if (line.trim()) lines.push(line.trimEnd());
  return lines;
}

/** Steering has no natural chart: export the coefficient on its scale and the two texts side by side. */
function steeringSvg(request, result) {
  if (!request || !result) return null;
  const svg = svgEl("svg");
  const width = 760;
  const scale = divergingScale(10, "steering coefficient");
  drawLegend(svg, scale, 20, 12, 300);
  const markerX = 20 + ((request.coefficient + 10) / 20) * 300;
  svg.append(svgEl("line", { x1: markerX, x2: markerX, y1: 24, y2: 42, stroke: INK, "stroke-width": 3 }));
  svg.append(svgText(`prompt: ${request.prompt}`, { x: 340, y: 34, fill: MUTED_INK }));
  const columns = [
    ["plain (coefficient 0)", result.rows[0].texts[0]],
    [`steered (coefficient ${request.coefficient})`, (result.rows[1] || result.rows[0]).texts[0]],
  ];
  let height = 0;
  columns.forEach(([title, text], i) => {
    const x = 20 + i * (width / 2);
    svg.append(svgText(title, { x, y: 80, "font-weight": 600 }));
    const lines = wrapText(text, 52);
    const block = svgText("", { x, y: 100, "font-size": 12 });
    lines.forEach((line, j) => block.append(svgEl("tspan", { x, dy: j ? 16 : 0 }, line)));
    svg.append(block);
    height = Math.max(height, 100 + lines.length * 16);
  });
  setSvgSize(svg, width, height + 16);
  return svg;
}
