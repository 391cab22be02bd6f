"use strict";
// charts.js: colour scales with legends, the hover tooltip, and the two chart kinds every view is built
// from: a heatmap of rect.cell (with row / column labels) and a line chart of series over layers.
// Charts set their colours and fonts as SVG presentation attributes (not CSS), so an exported .svg / .png
// looks the same as the page.

const FONT_FAMILY = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const INK = "#1f2328";
const MUTED_INK = "#59636e";
const GRID_LINE = "#d8dee4";
const MISSING_FILL = "#eef1f4";
const CHAR_WIDTH = 6.6; // average width of an 11px character, for laying out labels without measuring text
const FIT_CHAR_WIDTH = 7.4; // a wide character (&, <, m, W): cutting text to this many fits even hostile tokens
// A categorical palette (Tableau 10) for line series.
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

// ---------------------------------------------------------------------------------------------------------
// Colour scales. Sequential (white → blue) for probabilities and shares; diverging (blue ← white → red)
// for effects and deltas, centred on 0.

const WHITE = [255, 255, 255];
const SEQUENTIAL_STOPS = [WHITE, [158, 202, 225], [33, 113, 181], [8, 48, 107]];
const DIVERGING_NEGATIVE = [WHITE, [146, 197, 222], [33, 102, 172]];
const DIVERGING_POSITIVE = [WHITE, [244, 165, 130], [178, 24, 43]];

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

/** Interpolate along evenly spaced colour stops, t in [0, 1]. */
function interpolateStops(stops, t) {
  const scaled = clamp(t, 0, 1) * (stops.length - 1);
  const index = Math.min(stops.length - 2, Math.floor(scaled));
  const local = scaled - index;
  return stops[index].map((channel, i) => Math.round(channel + (stops[index + 1][i] - channel) * local));
}

function rgbText([r, g, b]) {
  return `rgb(${r}, ${g}, ${b})`;
}

/** Dark text on light cells, white text on dark ones (relative luminance). */
function inkOn([r, g, b]) {
  const luminance = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
  return luminance > 0.55 ? INK : "#ffffff";
}

function sequentialScale(min, max, label) {
  const span = max - min || 1;
  return {
    kind: "sequential",
    min,
    max,
    label,
    rgb: (value) => (isNumber(value) ? interpolateStops(SEQUENTIAL_STOPS, (value - min) / span) : null),
    ticks: [min, (min + max) / 2, max],
  };
}

/** Symmetric around 0: -limit is full blue, +limit full red (values beyond are clamped). */
function divergingScale(limit, label) {
  const bound = limit > 0 ? limit : 1;
  return {
    kind: "diverging",
    min: -bound,
    max: bound,
    label,
    rgb: (value) => {
      if (!isNumber(value)) return null;
      const t = clamp(value / bound, -1, 1);
      return t < 0 ? interpolateStops(DIVERGING_NEGATIVE, -t) : interpolateStops(DIVERGING_POSITIVE, t);
    },
    ticks: [-bound, 0, bound],
  };
}

function fillFor(scale, value) {
  const rgb = scale.rgb(value);
  return rgb ? rgbText(rgb) : MISSING_FILL;
}

function largestMagnitude(values) {
  return values.filter(isNumber).reduce((largest, value) => Math.max(largest, Math.abs(value)), 0);
}

// ---------------------------------------------------------------------------------------------------------
// SVG basics.

let uniqueCounter = 0;

function uniqueId(prefix) {
  uniqueCounter += 1;
  return `${prefix}-${uniqueCounter}`;
}

/** Explicit width, height and viewBox, so the svg is the same size on the page and when exported. */
function setSvgSize(svg, width, height) {
  const w = Math.ceil(width);
  const h = Math.ceil(height);
  setAttributes(svg, { width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  return { width: w, height: h };
}

function svgText(text, attrs = {}) {
  return svgEl("text", { "font-family": FONT_FAMILY, "font-size": 11, fill: INK, ...attrs }, text);
}

/** A label cut to fit `width` pixels, with the whole text as its <title> when it was cut. */
function fittedText(text, width, attrs = {}) {
  const maxChars = Math.max(1, Math.floor(width / FIT_CHAR_WIDTH));
  const shown = truncate(text, maxChars);
  const node = svgText(shown, attrs);
  if (shown !== String(text)) node.append(svgEl("title", {}, String(text)));
  return node;
}

function showEmptyChart(svg, message) {
  clear(svg);
  setSvgSize(svg, Math.max(320, message.length * CHAR_WIDTH + 24), 40);
  svg.append(svgText(message, { x: 12, y: 24, fill: MUTED_INK }));
}

/** A colour bar with its end (and centre) values and a caption, drawn at (x, y); returns its height. */
function drawLegend(parent, scale, x, y, width = 180) {
  const svgRoot = parent.ownerSVGElement || parent;
  const gradientId = uniqueId("legend-gradient");
  const gradient = svgEl("linearGradient", { id: gradientId, x1: 0, x2: 1, y1: 0, y2: 0 });
  for (let i = 0; i <= 10; i += 1) {
    const value = scale.min + ((scale.max - scale.min) * i) / 10;
    gradient.append(svgEl("stop", { offset: `${i * 10}%`, "stop-color": fillFor(scale, value) }));
  }
  let defs = svgRoot.querySelector(":scope > defs");
  if (!defs) {
    defs = svgEl("defs");
    svgRoot.prepend(defs);
  }
  defs.append(gradient);
  const legend = svgEl("g", { class: "legend", transform: `translate(${x}, ${y})` });
  legend.append(svgText(scale.label || "", { x: 0, y: 10, fill: MUTED_INK }));
  legend.append(svgEl("rect", { x: 0, y: 16, width, height: 10, fill: `url(#${gradientId})`, stroke: GRID_LINE }));
  scale.ticks.forEach((tick, i) => {
    const anchor = i === 0 ? "start" : i === scale.ticks.length - 1 ? "end" : "middle";
    const tx = ((tick - scale.min) / (scale.max - scale.min || 1)) * width;
    legend.append(svgText(formatCompact(tick), { x: tx, y: 38, "text-anchor": anchor, fill: MUTED_INK, "font-size": 10 }));
  });
  parent.append(legend);
  return 44;
}

// ---------------------------------------------------------------------------------------------------------
// The tooltip: a positioned div filled with text nodes only.

/** rows: [[name, value], ...]; both shown as text. */
function showTooltip(event, title, rows = []) {
  const tooltip = byId("tooltip");
  clear(tooltip);
  tooltip.append(el("div", { class: "tooltip-title" }, title));
  if (rows.length) {
    const table = el("table");
    for (const [name, value] of rows) table.append(el("tr", {}, el("td", {}, name), el("td", { class: "num" }, value)));
    tooltip.append(table);
  }
  setShown(tooltip, true);
  moveTooltip(event);
}

function moveTooltip(event) {
  const tooltip = byId("tooltip");
  const margin = 14;
  const { width, height } = tooltip.getBoundingClientRect();
  let left = event.clientX + margin;
  let top = event.clientY + margin;
  if (left + width > window.innerWidth - 4) left = event.clientX - width - margin;
  if (top + height > window.innerHeight - 4) top = event.clientY - height - margin;
  tooltip.style.left = `${Math.max(4, left)}px`;
  tooltip.style.top = `${Math.max(4, top)}px`;
}

function hideTooltip() {
  setShown(byId("tooltip"), false);
}

/** Hover behaviour for any SVG element: tooltip() returns {title, rows} when the pointer enters. */
function attachTooltip(node, tooltip) {
  node.addEventListener("mouseenter", (event) => {
    const { title, rows } = tooltip();
    showTooltip(event, title, rows);
  });
  node.addEventListener("mousemove", moveTooltip);
  node.addEventListener("mouseleave", hideTooltip);
}

function markSelected(svg, node) {
  for (const other of svg.querySelectorAll(".cell.selected")) other.classList.remove("selected");
  node.classList.add("selected");
}

// ---------------------------------------------------------------------------------------------------------
// Heatmap: the one grid every view uses (lens, patching, ablation, attention heads, MoE).

/**
 * Draw a grid of rect.cell into svg (an <svg>, cleared first; may be nested in another svg).
 *
 * spec:
 *   rows, columns   [{label, title?}] — rows are drawn top to bottom in the order given
 *   cell(r, c)      → {value, data: {"data-…": …}, text?, tooltip: () => ({title, rows})} or null for no cell
 *   scale           from sequentialScale / divergingScale
 *   cellWidth, cellHeight
 *   rowAxis         caption over the row labels, e.g. "layer"
 *   maxLabelChars   cut longer labels (default 22; panels use less)
 *   title           optional heading line
 *   legend          false to leave the colour bar to the caller (panel grids draw one for all)
 *   onCellClick(r, c, rect)
 * Returns {width, height}.
 */
function drawHeatmap(svg, spec) {
  const { rows, columns, cell, scale, cellWidth = 56, cellHeight = 24, rowAxis = "", title = "", legend = true } = spec;
  const maxLabelChars = spec.maxLabelChars ?? 22; // longer row / slanted column labels are cut (full text in <title>)
  clear(svg);
  const longestColumnLabel = Math.max(1, ...columns.map((column) => Array.from(String(column.label)).length));
  // Narrow cells get slanted column labels, unless the labels are short enough to fit (E0, E1, …).
  const rotateColumnLabels = cellWidth < 40 && longestColumnLabel * CHAR_WIDTH > cellWidth - 4;
  const slantedChars = Math.min(14, maxLabelChars);
  const columnLabelHeight = rotateColumnLabels ? Math.min(slantedChars, longestColumnLabel) * CHAR_WIDTH * 0.82 + 12 : 18;
  const longestRowLabel = Math.max(rowAxis.length, ...rows.map((row) => Array.from(String(row.label)).length));
  const left = Math.max(34, Math.min(maxLabelChars, longestRowLabel) * CHAR_WIDTH + 12);
  const titleHeight = title ? 20 : 0;
  const top = titleHeight + columnLabelHeight + 4;
  const gridWidth = columns.length * cellWidth;
  const gridHeight = rows.length * cellHeight;

  if (title) svg.append(svgText(title, { x: 0, y: 14, "font-weight": 600, "font-size": 12 }));
  if (rowAxis) svg.append(svgText(rowAxis, { x: left - 6, y: top - 6, "text-anchor": "end", fill: MUTED_INK }));
  columns.forEach((column, c) => svg.append(columnLabel(column, c, { left, top, cellWidth, rotate: rotateColumnLabels, slantedChars })));
  rows.forEach((row, r) => {
    const label = fittedText(row.label, left - 10, { x: left - 6, y: top + r * cellHeight + cellHeight / 2 + 4, "text-anchor": "end" });
    if (row.title) label.append(svgEl("title", {}, row.title));
    svg.append(label);
  });

  const grid = svgEl("g", { class: "cells" });
  rows.forEach((row, r) =>
    columns.forEach((column, c) => {
      const info = cell(r, c);
      if (info) grid.append(...heatmapCell(info, { r, c, x: left + c * cellWidth, y: top + r * cellHeight, cellWidth, cellHeight, scale }));
    }),
  );
  svg.append(grid);
  if (spec.onCellClick) {
    svg.classList.add("clickable");
    grid.addEventListener("click", (event) => {
      const rect = event.target.closest("rect.cell");
      if (rect) spec.onCellClick(Number(rect.dataset.row), Number(rect.dataset.col), rect);
    });
  }
  let height = top + gridHeight + 8;
  let width = left + gridWidth + 8;
  if (legend) {
    height += drawLegend(svg, scale, left, height + 2) + 6;
    width = Math.max(width, left + 190);
  }
  return setSvgSize(svg, Math.max(width, title.length * CHAR_WIDTH * 1.1), height);
}

function columnLabel(column, c, { left, top, cellWidth, rotate, slantedChars }) {
  const centre = left + c * cellWidth + cellWidth / 2;
  const attrs = rotate
    ? { x: 0, y: 0, transform: `translate(${centre + 3}, ${top - 4}) rotate(-55)`, "text-anchor": "start", "font-size": 10 }
    : { x: centre, y: top - 6, "text-anchor": "middle" };
  const label = fittedText(column.label, rotate ? slantedChars * FIT_CHAR_WIDTH : cellWidth - 4, attrs);
  if (column.title) label.append(svgEl("title", {}, column.title));
  return label;
}

function heatmapCell(info, { r, c, x, y, cellWidth, cellHeight, scale }) {
  const rgb = scale.rgb(info.value);
  const rect = svgEl("rect", {
    class: "cell",
    "data-row": r, // grid indexes for the click handler; the view's own data-* attributes follow
    "data-col": c,
    x,
    y,
    width: cellWidth - 1,
    height: cellHeight - 1,
    rx: 2,
    fill: rgb ? rgbText(rgb) : MISSING_FILL,
    ...info.data,
  });
  if (info.tooltip) attachTooltip(rect, info.tooltip);
  const nodes = [rect];
  if (info.text !== undefined && info.text !== null && cellWidth >= 22) {
    nodes.push(
      fittedText(info.text, cellWidth - 6, {
        x: x + cellWidth / 2,
        y: y + cellHeight / 2 + 4,
        "text-anchor": "middle",
        fill: rgb ? inkOn(rgb) : INK,
        "pointer-events": "none",
        class: "cell-text",
      }),
    );
  }
  return nodes;
}

/**
 * Several heatmaps in one svg (one per attention head, one per MoE layer), flowed into rows no wider than
 * maxWidth, with one legend below. Each panel is {spec, attrs} where attrs go on the panel's nested <svg>.
 */
function drawHeatmapPanels(svg, panels, { scale, maxWidth = 1180, gap = 18 }) {
  clear(svg);
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  let width = 0;
  for (const panel of panels) {
    const inner = svgEl("svg", panel.attrs || {});
    svg.append(inner); // attached before drawing so its text can be measured if ever needed
    const size = drawHeatmap(inner, { ...panel.spec, scale, legend: false });
    if (x > 0 && x + size.width > maxWidth) {
      x = 0;
      y += rowHeight + gap;
      rowHeight = 0;
    }
    setAttributes(inner, { x, y });
    x += size.width + gap;
    rowHeight = Math.max(rowHeight, size.height);
    width = Math.max(width, x - gap);
  }
  const legendTop = y + rowHeight + 6;
  const legendHeight = drawLegend(svg, scale, 34, legendTop);
  return setSvgSize(svg, Math.max(width, 240), legendTop + legendHeight + 4);
}

// ---------------------------------------------------------------------------------------------------------
// Line chart: series of (x, y) points, e.g. a tracked token's probability per layer.

/** An axis tick: niceTicks values are round already, so four significant digits show them exactly. */
function formatTick(value) {
  return Math.abs(value) >= 1e5 || (value !== 0 && Math.abs(value) < 1e-4) ? value.toExponential(1) : String(Number(value.toPrecision(4)));
}

/** About `count` round tick values covering [min, max]. */
function niceTicks(min, max, count = 5) {
  if (!(max > min)) return [min];
  const rough = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((candidate) => candidate >= rough) || rough;
  const ticks = [];
  for (let tick = Math.ceil(min / step) * step; tick <= max + step * 1e-9; tick += step) ticks.push(Number(tick.toPrecision(12)));
  return ticks;
}

/**
 * spec:
 *   series      [{name, label?, points: [[x, y, extraTooltipRows?]], attrs: {class, "data-…"}}]; label is what the
 *               legend shows
 *   xLabel, yLabel
 *   yMin, yMax  optional fixed y domain (e.g. 0..1 for probabilities)
 *   integerX    x values are layers: ticks at whole numbers
 *   width, height
 *   emptyMessage
 */
function drawLineChart(svg, spec) {
  const { series, xLabel = "", yLabel = "", width = 640, height = 260, integerX = true } = spec;
  const points = series.flatMap((s) => s.points).filter(([px, py]) => isNumber(px) && isNumber(py));
  if (!points.length) {
    showEmptyChart(svg, spec.emptyMessage || "nothing to plot");
    return;
  }
  clear(svg);
  const legendWidth = Math.min(220, 34 + Math.max(...series.map((s) => Array.from(s.label ?? s.name).length)) * CHAR_WIDTH);
  const margin = { left: 58, right: legendWidth + 16, top: 14, bottom: 40 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const xs = points.map(([px]) => px);
  const ys = points.map(([, py]) => py);
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs) === xMin ? xMin + 1 : Math.max(...xs);
  const yMin = spec.yMin ?? Math.min(0, ...ys);
  let yMax = spec.yMax ?? Math.max(...ys);
  if (yMax === yMin) yMax = yMin + 1;
  const toX = (value) => margin.left + ((value - xMin) / (xMax - xMin)) * plotWidth;
  const toY = (value) => margin.top + plotHeight - ((value - yMin) / (yMax - yMin)) * plotHeight;

  const axes = svgEl("g", { class: "axes" });
  for (const tick of niceTicks(yMin, yMax, 5)) {
    axes.append(svgEl("line", { x1: margin.left, x2: margin.left + plotWidth, y1: toY(tick), y2: toY(tick), stroke: GRID_LINE }));
    axes.append(svgText(formatTick(tick), { x: margin.left - 6, y: toY(tick) + 4, "text-anchor": "end", fill: MUTED_INK, "font-size": 10 }));
  }
  const xTicks = integerX ? niceTicks(xMin, xMax, Math.min(12, xMax - xMin)).filter(Number.isInteger) : niceTicks(xMin, xMax, 8);
  for (const tick of xTicks) {
    axes.append(svgEl("line", { x1: toX(tick), x2: toX(tick), y1: margin.top + plotHeight, y2: margin.top + plotHeight + 4, stroke: MUTED_INK }));
    axes.append(svgText(String(tick), { x: toX(tick), y: margin.top + plotHeight + 16, "text-anchor": "middle", fill: MUTED_INK, "font-size": 10 }));
  }
  axes.append(svgEl("line", { x1: margin.left, x2: margin.left + plotWidth, y1: margin.top + plotHeight, y2: margin.top + plotHeight, stroke: MUTED_INK }));
  axes.append(svgText(xLabel, { x: margin.left + plotWidth / 2, y: height - 6, "text-anchor": "middle", fill: MUTED_INK }));
  axes.append(svgText(yLabel, { x: 0, y: 0, transform: `translate(14, ${margin.top + plotHeight / 2}) rotate(-90)`, "text-anchor": "middle", fill: MUTED_INK }));
  svg.append(axes);

  series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const valid = s.points.filter(([px, py]) => isNumber(px) && isNumber(py));
    const d = valid.map(([px, py], j) => `${j ? "L" : "M"}${toX(px).toFixed(1)},${toY(py).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-linejoin": "round", ...s.attrs }));
    for (const [px, py, extraRows] of valid) {
      const dot = svgEl("circle", { class: "point", cx: toX(px), cy: toY(py), r: 3.5, fill: colour });
      attachTooltip(dot, () => ({ title: s.label ?? s.name, rows: [[xLabel, String(px)], [yLabel, formatNumber(py, 4)], ...(extraRows || [])] }));
      svg.append(dot);
    }
  });
  drawSeriesLegend(svg, series, width - margin.right + 16, margin.top, legendWidth);
  setSvgSize(svg, width, height);
}

function drawSeriesLegend(svg, series, x, y, width) {
  const legend = svgEl("g", { class: "legend", transform: `translate(${x}, ${y})` });
  series.forEach((s, i) => {
    legend.append(svgEl("line", { x1: 0, x2: 18, y1: i * 18 + 6, y2: i * 18 + 6, stroke: PALETTE[i % PALETTE.length], "stroke-width": 3 }));
    legend.append(fittedText(s.label ?? s.name, width - 26, { x: 24, y: i * 18 + 10 }));
  });
  svg.append(legend);
}

// ---------------------------------------------------------------------------------------------------------
// Tables with shaded number cells (head roles, entropy, sink mass, details).

/**
 * Fill a <table>. head: header cells, each a string or {text, attrs} (null: no header row). body: rows {cells, attrs}, each cell
 * a string / number / Node / ready <td> or {text, shade (an rgb array), className, title, header}.
 */
function fillTable(table, head, body) {
  clear(table);
  if (head) {
    const headerRow = el("tr");
    for (const cell of head) {
      const spec = typeof cell === "object" && cell !== null ? cell : { text: cell };
      headerRow.append(el("th", { scope: "col", ...(spec.attrs || {}) }, spec.text));
    }
    table.append(el("thead", {}, headerRow));
  }
  const tbody = el("tbody");
  for (const row of body) tbody.append(el("tr", row.attrs || {}, row.cells.map(tableCell)));
  table.append(tbody);
}

function tableCell(cell) {
  if (cell instanceof HTMLTableCellElement) return cell;
  if (cell instanceof Node) return el("td", {}, cell);
  const spec = typeof cell === "object" && cell !== null ? cell : { text: cell };
  const td = el(spec.header ? "th" : "td", { class: spec.className, title: spec.title, scope: spec.header ? "row" : null }, spec.text ?? "");
  if (spec.shade) {
    // CSSOM assignment (allowed by the CSP), unlike a style attribute.
    td.style.backgroundColor = rgbText(spec.shade);
    td.style.color = inkOn(spec.shade);
  }
  return td;
}

/** A shaded number cell for fillTable. */
function shadedCell(value, scale, digits = 3) {
  return { text: formatNumber(value, digits), shade: scale.rgb(value), className: "num" };
}
