"use strict";
// views-inspect.js: the read-only views: logit lens, attention, MoE routing and weight statistics.
//
// Every view is an object that app.js drives the same way:
//   name             the data-view name, also the "view" sent to /api/python
//   init()           bind the view's controls (once, at load)
//   onModel(model)   adapt to /api/model (layer buttons, selects)
//   onShow()         optional: the tab was opened (lazy, light look-ups only)
//   currentRequest() the request the form would send now (for copy-as-Python before a first run)
//   lastRequest, lastResponse   what the view last sent and got (copy-as-Python, JSON download)
//   mainSvg()        the svg to export

/** Layers as heatmap rows, last layer first (on top), each remembering its index in the response arrays. */
function layerRowsTopDown(layers) {
  return layers.map((layer, index) => ({ layer, index, label: String(layer) })).reverse();
}

function tokenColumns(tokens) {
  return tokens.map((token, pos) => ({ label: displayToken(token), title: `position ${pos}: ${displayToken(token)}` }));
}

function onSubmit(formId, handler) {
  byId(formId).addEventListener("submit", (event) => {
    event.preventDefault();
    handler();
  });
}

// ---------------------------------------------------------------------------------------------------------
// Logit lens.

const lensView = {
  name: "lens",
  lastRequest: null,
  lastResponse: null,

  init() {
    onSubmit("lens-form", () => this.run());
  },

  currentRequest() {
    return { prompt: byId("lens-prompt").value, top_k: 5, track: parseTokenList(byId("lens-track").value) };
  },

  mainSvg: () => byId("lens-heatmap"),

  async run() {
    const request = this.currentRequest();
    const ticket = takeTicket("lens");
    const answers = await withStatus("logit lens", () =>
      Promise.all([api.post("/api/lens/grid", { prompt: request.prompt, top_k: 3 }), api.post("/api/lens", request)]),
    );
    if (!answers || !ticket.isCurrent()) return;
    const [grid, lensAnswer] = answers;
    // The contract says one LensResult; a list of one (what lens() returns for a batch) is accepted too.
    const lens = Array.isArray(lensAnswer) ? lensAnswer[0] : lensAnswer;
    this.lastRequest = request;
    this.lastResponse = { grid, lens };
    drawLensHeatmap(byId("lens-heatmap"), grid);
    drawLensCurves(byId("lens-curves"), lens);
    byId("lens-summary").textContent = lensSummary(lens);
  },
};

function drawLensHeatmap(svg, grid) {
  const rows = layerRowsTopDown(grid.layers);
  drawHeatmap(svg, {
    rows,
    columns: tokenColumns(grid.tokens),
    scale: sequentialScale(0, 1, "top-1 probability"),
    cellWidth: grid.tokens.length > 16 ? 58 : 74,
    cellHeight: 26,
    rowAxis: "layer",
    cell: (r, pos) => {
      const { layer, index } = rows[r];
      const top = (grid.cells[index] && grid.cells[index][pos] && grid.cells[index][pos].top) || [];
      if (!top.length) return null;
      return {
        value: top[0].prob,
        text: displayToken(top[0].token),
        data: { "data-layer": layer, "data-pos": pos, "data-top-token": top[0].token },
        tooltip: () => ({
          title: `layer ${layer} \u00b7 position ${pos} ${displayToken(grid.tokens[pos])}`,
          rows: top.map((entry) => [displayToken(entry.token), formatProb(entry.prob)]),
        }),
      };
    },
  });
}

function drawLensCurves(svg, lens) {
  const evolutions = (lens && lens.token_evolutions) || [];
  drawLineChart(svg, {
    series: evolutions.map((evolution) => ({
      name: evolution.token,
      label: displayToken(evolution.token),
      attrs: { class: "curve", "data-token": evolution.token },
      points: evolution.layers.map((layer, i) => [layer, evolution.probs[i], [["rank", formatNumber(evolution.ranks && evolution.ranks[i])]]]),
    })),
    xLabel: "layer",
    yLabel: "probability",
    yMin: 0,
    yMax: 1,
    width: 680,
    height: 240,
    emptyMessage: "Type tokens to track (comma-separated, e.g. \u201c Paris, Tokyo\u201d) and run again.",
  });
}

function lensSummary(lens) {
  if (!lens || !lens.predicted) return "";
  const parts = [`Final prediction ${displayToken(lens.predicted.token)} (p = ${formatProb(lens.predicted.prob)})`];
  if (isNumber(lens.emergence_layer)) parts.push(`first top-1 at layer ${lens.emergence_layer}`);
  return `${parts.join(", ")}. Hover a cell for its top tokens.`;
}

// ---------------------------------------------------------------------------------------------------------
// Attention.

const attentionView = {
  name: "attention",
  lastRequest: null,
  lastResponse: null,
  selectedLayer: 0,

  init() {
    onSubmit("attention-form", () => this.run(this.selectedLayer));
  },

  onModel(model) {
    const row = clear(byId("attention-layers"));
    for (let layer = 0; layer < model.n_layers; layer += 1) {
      const button = el("button", { type: "button", class: "layer-button", "data-layer": layer, "aria-pressed": "false" }, String(layer));
      button.addEventListener("click", () => this.run(layer));
      row.append(button);
    }
  },

  currentRequest() {
    return { prompt: byId("attention-prompt").value, layer: this.selectedLayer };
  },

  mainSvg: () => byId("attention-patterns").querySelector("svg"),

  async run(layer) {
    this.selectedLayer = layer;
    for (const button of document.querySelectorAll("#attention-layers .layer-button")) {
      const active = Number(button.dataset.layer) === layer;
      button.classList.toggle("active", active);
      button.setAttribute("aria-pressed", String(active));
    }
    const request = this.currentRequest();
    const ticket = takeTicket("attention");
    const result = await withStatus(`attention of layer ${layer}`, () => api.post("/api/attention", request));
    if (!result || !ticket.isCurrent()) return;
    this.lastRequest = request;
    this.lastResponse = result;
    drawAttentionPatterns(byId("attention-patterns"), result);
    drawHeadRoles(byId("head-roles"), result.roles || {});
    drawLayerHeadTable(byId("attention-entropy"), result.entropy || [], result.layer, sequentialScale(0, maxOf(result.entropy), "entropy"));
    drawLayerHeadTable(byId("attention-sinks"), result.sink_mass || [], result.layer, sequentialScale(0, 1, "sink mass"));
    byId("attention-summary").textContent =
      `Layer ${result.layer}: ${result.patterns.length} heads; row = query token, column = key token it attends to. Hover for weights.`;
  },
};

function maxOf(matrix) {
  const values = (matrix || []).flat(Infinity).filter(isNumber);
  return values.length ? Math.max(...values) : 1;
}

function drawAttentionPatterns(container, result) {
  const tokens = result.tokens.map(displayToken);
  const n = tokens.length;
  const cellSize = clamp(Math.floor(260 / Math.max(1, n)), 8, 26);
  let svg = container.querySelector("svg.attention-heads");
  if (!svg) {
    svg = svgEl("svg", { class: "chart attention-heads", width: 0, height: 0, "aria-label": "attention patterns per head" });
    container.replaceChildren(svg);
  }
  // One svg holds every head (each a nested svg.head-pattern), so the export shows the whole layer.
  const panels = result.patterns.map((pattern, head) => ({
    attrs: { class: "head-pattern", "data-head": head },
    spec: {
      title: `head ${result.layer}.${head}`,
      rows: tokens.map((label, q) => ({ label, title: `query ${q}: ${label}` })),
      columns: tokens.map((label, k) => ({ label, title: `key ${k}: ${label}` })),
      cellWidth: cellSize,
      cellHeight: cellSize,
      maxLabelChars: 12,
      cell: (q, k) => ({
        value: pattern[q][k],
        data: { "data-query": q, "data-key": k, "data-weight": pattern[q][k] },
        tooltip: () => ({
          title: `head ${result.layer}.${head}: ${tokens[q]} \u2192 ${tokens[k]}`,
          rows: [["query position", String(q)], ["key position", String(k)], ["weight", formatProb(pattern[q][k])]],
        }),
      }),
    },
  }));
  drawHeatmapPanels(svg, panels, { scale: sequentialScale(0, 1, "attention weight"), maxWidth: Math.max(480, container.clientWidth - 24) }); // clientWidth includes the padding
}

const ROLE_NAMES = ["previous_token", "duplicate_token", "induction", "copying"];

function drawHeadRoles(table, roles) {
  const scores = roles.induction || roles[Object.keys(roles)[0]] || [];
  const heads = [];
  scores.forEach((row, layer) => row.forEach((unused, head) => heads.push({ layer, head })));
  const score = (role, { layer, head }) => (roles[role] && roles[role][layer] ? roles[role][layer][head] : null);
  heads.sort((a, b) => (score("induction", b) ?? -Infinity) - (score("induction", a) ?? -Infinity));
  const scale = sequentialScale(0, 1, "score");
  fillTable(
    table,
    ["head", ...ROLE_NAMES.map((role) => role.replace("_", " "))],
    heads.map((entry) => ({
      attrs: { "data-layer": entry.layer, "data-head": entry.head },
      cells: [{ text: `${entry.layer}.${entry.head}`, header: true }, ...ROLE_NAMES.map((role) => shadedCell(score(role, entry), scale))],
    })),
  );
}

/** A layers × heads table of one number per head; the layer being viewed is highlighted. */
function drawLayerHeadTable(table, matrix, currentLayer, scale) {
  const headCount = Math.max(0, ...matrix.map((row) => row.length));
  fillTable(
    table,
    ["layer", ...Array.from({ length: headCount }, (unused, head) => `head ${head}`)],
    matrix.map((row, layer) => ({
      attrs: { class: layer === currentLayer ? "current" : null, "data-layer": layer },
      cells: [{ text: String(layer), header: true }, ...row.map((value) => shadedCell(value, scale))],
    })),
  );
}

// ---------------------------------------------------------------------------------------------------------
// MoE routing.

const moeView = {
  name: "moe",
  lastRequest: null,
  lastResponse: null,
  info: null,

  init() {
    onSubmit("moe-form", () => this.run());
  },

  async onShow() {
    if (this.info) return;
    const info = await withStatus("MoE info", () => api.get("/api/moe/info"));
    if (!info) return;
    this.info = info;
    byId("moe-info").textContent = moeInfoText(info);
  },

  currentRequest() {
    return { prompt: byId("moe-prompt").value, prompts: parseLines(byId("moe-corpus").value) };
  },

  mainSvg: () => byId("moe-routing"),

  async run() {
    const request = this.currentRequest();
    const ticket = takeTicket("moe");
    const answers = await withStatus("MoE routing", () =>
      Promise.all([api.post("/api/moe/trace", { prompt: request.prompt }), api.post("/api/moe/utilization", { prompts: request.prompts })]),
    );
    if (!answers || !ticket.isCurrent()) return;
    const [trace, utilization] = answers;
    this.lastRequest = request;
    this.lastResponse = { info: this.info, trace, utilization };
    drawRouting(byId("moe-routing"), trace);
    drawUtilization(byId("moe-utilization"), utilization);
  },
};

function moeInfoText(info) {
  const parts = [`${info.n_experts} experts`, `top-${info.top_k} routing`];
  if (info.shared_experts) parts.push(`${info.shared_experts} shared expert(s)`);
  if (info.moe_layers) parts.push(`MoE layers ${info.moe_layers.join(", ")}`);
  if (info.dense_layers && info.dense_layers.length) parts.push(`dense layers ${info.dense_layers.join(", ")}`);
  parts.push(`router: ${info.router_rule || info.rule}`);
  return `${parts.join(" \u00b7 ")}.`;
}

function drawRouting(svg, trace) {
  const tokens = trace.tokens.map(displayToken);
  const experts = Array.from({ length: trace.n_experts }, (unused, e) => e);
  const cellWidth = experts.length <= 8 ? 38 : clamp(Math.floor(320 / experts.length), 6, 20);
  const panels = trace.layers.map((layer) => ({
    attrs: { class: "moe-layer", "data-layer": layer.layer },
    spec: {
      title: `layer ${layer.layer}`,
      rows: tokens.map((label, pos) => ({ label, title: `position ${pos}: ${label}` })),
      columns: experts.map((e) => ({ label: `E${e}`, title: `expert ${e}` })),
      rowAxis: "token",
      maxLabelChars: 12,
      cellWidth,
      cellHeight: 22,
      cell: (pos, expert) => {
        const rank = layer.experts[pos].indexOf(expert);
        const weight = rank >= 0 ? layer.weights[pos][rank] : 0;
        return {
          value: weight,
          text: rank >= 0 ? formatCompact(weight) : null,
          data: { "data-layer": layer.layer, "data-pos": pos, "data-expert": expert, "data-weight": weight },
          tooltip: () => ({
            title: `layer ${layer.layer} \u00b7 ${tokens[pos]} \u2192 expert ${expert}`,
            rows: [
              ["router weight", rank >= 0 ? formatProb(weight) : "not chosen"],
              ["choice", rank >= 0 ? `#${rank + 1} of ${trace.top_k}` : "\u2013"],
              ["routing entropy", formatNumber(layer.entropy && layer.entropy[pos])],
            ],
          }),
        };
      },
    },
  }));
  drawHeatmapPanels(svg, panels, { scale: sequentialScale(0, 1, "router weight"), maxWidth: 1180 });
}

function drawUtilization(svg, utilization) {
  const rows = layerRowsTopDown(utilization.layers.map((layer) => layer.layer));
  const experts = Array.from({ length: utilization.n_experts }, (unused, e) => ({ label: `E${e}`, title: `expert ${e}` }));
  drawHeatmap(svg, {
    rows,
    columns: experts,
    rowAxis: "layer",
    cellWidth: experts.length <= 16 ? 48 : 20,
    cellHeight: 24,
    scale: sequentialScale(0, 1, "share of tokens routed to the expert"),
    cell: (r, expert) => {
      const layer = utilization.layers[rows[r].index];
      const share = layer.share[expert];
      return {
        value: share,
        text: formatCompact(share),
        data: { "data-layer": layer.layer, "data-expert": expert, "data-share": share },
        tooltip: () => ({
          title: `layer ${layer.layer} \u00b7 expert ${expert}`,
          rows: [
            ["share of tokens", formatProb(share)],
            ["tokens", formatNumber(layer.counts && layer.counts[expert])],
            ["cold", layer.cold && layer.cold.includes(expert) ? "yes" : "no"],
          ],
        }),
      };
    },
  });
  byId("moe-utilization-summary").textContent =
    `${utilization.tokens} tokens from ${utilization.prompts} prompt(s); each token picks ${utilization.top_k} experts, ` +
    `so a row sums to ${utilization.top_k}. Load-balancing loss ${formatNumber(utilization.load_balancing_loss)}.`;
}

// ---------------------------------------------------------------------------------------------------------
// Weight statistics.

// Columns in table order; only those present in the response are shown.
const WEIGHT_COLUMNS = [
  "param_name",
  "layer_index",
  "block_type",
  "shape",
  "rank",
  "mean",
  "std",
  "sparsity",
  "frobenius_norm",
  "top_singular_value",
  "stable_rank",
  "effective_rank",
  "condition_number",
  "alpha",
];

const weightsView = {
  name: "weights",
  lastRequest: null,
  lastResponse: null,
  sort: { key: "layer_index", descending: false },

  init() {
    onSubmit("weights-form", () => this.run());
    byId("weights-metric").addEventListener("change", () => this.lastResponse && drawWeightsPlot(this.lastResponse));
    byId("weights-table").addEventListener("click", (event) => {
      const th = event.target.closest("th[data-key]");
      if (th) this.sortBy(th.dataset.key);
    });
  },

  currentRequest: () => ({}),

  mainSvg: () => byId("weights-plot"),

  async run() {
    const rows = await withStatus("weight statistics", () => api.get("/api/weights"));
    if (!rows) return;
    this.lastRequest = {};
    this.lastResponse = rows;
    byId("weights-summary").textContent = `${rows.length} tensors. Click a column header to sort; again to reverse.`;
    this.drawTable();
    offerAvailableMetrics(rows);
    drawWeightsPlot(rows);
  },

  sortBy(key) {
    this.sort = { key, descending: this.sort.key === key ? !this.sort.descending : false };
    this.drawTable();
  },

  drawTable() {
    const rows = this.lastResponse || [];
    const keys = WEIGHT_COLUMNS.filter((key) => rows.some((row) => key in row));
    const { key, descending } = this.sort;
    const sorted = [...rows].sort((a, b) => compareForSort(a[key], b[key], descending));
    fillTable(
      byId("weights-table"),
      keys.map((column) => ({
        text: column.replace(/_/g, " "),
        attrs: {
          "data-key": column,
          class: column === key ? (descending ? "sorted-desc" : "sorted-asc") : null,
          "aria-sort": column === key ? (descending ? "descending" : "ascending") : "none",
          title: `sort by ${column}`,
        },
      })),
      sorted.map((row) => ({
        cells: keys.map((column) => {
          const value = row[column];
          return typeof value === "number" ? { text: formatNumber(value, 4), className: "num" } : { text: value ?? "\u2013" };
        }),
      })),
    );
  },
};

/** Numbers numerically, text alphabetically; missing values always last, whichever the direction. */
function compareForSort(a, b, descending) {
  const missing = (value) => value === null || value === undefined || (typeof value === "number" && !Number.isFinite(value));
  if (missing(a) || missing(b)) return missing(a) - missing(b);
  const order = typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b), undefined, { numeric: true });
  return descending ? -order : order;
}

/**
 * Mark the metrics the table has no values for (the spectral ones are absent unless the server computed them)
 * and, if the chosen one is among them, switch to one that can be plotted. Options stay selectable.
 */
function offerAvailableMetrics(rows) {
  const select = byId("weights-metric");
  for (const option of select.options) {
    const available = rows.some((row) => isNumber(row[option.value]));
    option.textContent = available ? option.value : `${option.value} (no values)`;
    option.classList.toggle("unavailable", !available);
  }
  if (select.selectedOptions[0] && select.selectedOptions[0].classList.contains("unavailable")) {
    const usable = [...select.options].find((option) => !option.classList.contains("unavailable"));
    if (usable) select.value = usable.value;
  }
}

/** The chosen metric per layer, one line per block type; several tensors of a block in a layer are averaged. */
function drawWeightsPlot(rows) {
  const metric = byId("weights-metric").value;
  const byBlock = new Map();
  for (const row of rows) {
    if (!Number.isInteger(row.layer_index) || !isNumber(row[metric])) continue;
    if (!byBlock.has(row.block_type)) byBlock.set(row.block_type, new Map());
    const layers = byBlock.get(row.block_type);
    if (!layers.has(row.layer_index)) layers.set(row.layer_index, []);
    layers.get(row.layer_index).push(row[metric]);
  }
  const series = [...byBlock.entries()].map(([block, layers]) => ({
    name: block,
    attrs: { class: "series", "data-block": block },
    points: [...layers.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([layer, values]) => [layer, values.reduce((sum, v) => sum + v, 0) / values.length, values.length > 1 ? [["tensors averaged", String(values.length)]] : []]),
  }));
  drawLineChart(byId("weights-plot"), {
    series,
    xLabel: "layer",
    yLabel: metric.replace(/_/g, " "),
    width: 880,
    height: 300,
    emptyMessage: `no per-layer values of ${metric} in this table`,
  });
}
