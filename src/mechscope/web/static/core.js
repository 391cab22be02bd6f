"use strict";
// core.js: building DOM safely, formatting numbers and tokens, the API client (access token, JSON errors),
// the #status line and long jobs followed over server-sent events.
// The page loads a few classic deferred scripts in order (no bundler), so these are plain globals.

const SVG_NS = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------------------------------------------------
// DOM building. Everything the server sends (token strings above all) is hostile: it only ever reaches the
// page through textContent / text nodes and setAttribute, never through HTML parsing.

function byId(id) {
  return document.getElementById(id);
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    // The CSP forbids inline styles and handlers; refuse them here so a slip fails loudly in development.
    if (name === "style" || name.toLowerCase().startsWith("on")) throw new Error(`refusing attribute ${name}`);
    node.setAttribute(name, String(value));
  }
  return node;
}

function appendChildren(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: el("td", {class: "num"}, "0.5"). Strings among the children become text nodes. */
function el(tag, attrs = {}, ...children) {
  return appendChildren(setAttributes(document.createElement(tag), attrs), children);
}

/** An SVG element (same calling convention as el). */
function svgEl(tag, attrs = {}, ...children) {
  return appendChildren(setAttributes(document.createElementNS(SVG_NS, tag), attrs), children);
}

function clear(node) {
  node.replaceChildren();
  return node;
}

/** Show or hide an element through the hidden attribute (CSS keeps [hidden] at display: none). */
function setShown(node, shown) {
  node.hidden = !shown;
}

// ---------------------------------------------------------------------------------------------------------
// Formatting.

/** A token with its whitespace made visible: a leading space is part of the token and matters. */
function displayToken(token) {
  return String(token ?? "")
    .replace(/ /g, "\u2423")
    .replace(/\n/g, "\u23ce")
    .replace(/\t/g, "\u21e5")
    .replace(/\r/g, "\u240d");
}

/** Cut a label to maxChars characters (code points, so emoji are not split), marking the cut with an ellipsis. */
function truncate(text, maxChars) {
  const chars = Array.from(String(text));
  if (chars.length <= maxChars) return chars.join("");
  return chars.slice(0, Math.max(1, maxChars - 1)).join("") + "\u2026";
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** A number for tables and labels: fixed digits, exponent for very large or very small values, – for none. */
function formatNumber(value, digits = 3) {
  if (!isNumber(value)) return "\u2013";
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const magnitude = Math.abs(value);
  if (magnitude >= 1e5 || (magnitude > 0 && magnitude < 10 ** -digits)) return value.toExponential(2);
  return value.toFixed(digits);
}

/** A short label for a number on a chart (legend ticks, cells): 0.5 not 0.50, and 0 for what rounds to 0. */
function formatCompact(value, digits = 2) {
  if (!isNumber(value)) return "\u2013";
  if (Math.abs(value) < 0.5 * 10 ** -digits) return "0";
  if (Math.abs(value) >= 1e4) return value.toExponential(1);
  return String(Number(value.toFixed(digits)));
}

function formatProb(p) {
  return formatNumber(p, 3);
}

function formatSigned(value, digits = 3) {
  if (!isNumber(value)) return "\u2013";
  const text = formatNumber(value, digits);
  return value > 0 ? `+${text}` : text;
}

/** Collapse any text to one short line for #status. */
function oneLine(text) {
  const line = String(text ?? "").replace(/\s+/g, " ").trim();
  return truncate(line, 300);
}

function parseLines(text) {
  return String(text)
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
}

/** Comma-separated tokens; whitespace is kept on purpose (" Paris" and "Paris" are different tokens). */
function parseTokenList(text) {
  return String(text)
    .split(",")
    .filter((token) => token.length > 0 && token.trim().length > 0);
}

// ---------------------------------------------------------------------------------------------------------
// The API client.

/** The access token from ?token=…, or null: then no header and no query parameter is sent. */
const ACCESS_TOKEN = new URLSearchParams(location.search).get("token") || null;

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function authHeaders(headers = {}) {
  return ACCESS_TOKEN ? { ...headers, "X-Mechscope-Token": ACCESS_TOKEN } : { ...headers };
}

/** A same-origin URL with token= added when the page has one (EventSource cannot send headers). */
function withTokenParam(path) {
  if (!ACCESS_TOKEN) return path;
  const url = new URL(path, location.href);
  url.searchParams.set("token", ACCESS_TOKEN);
  return url.pathname + url.search;
}

/**
 * JSON.parse that also accepts the bare NaN / Infinity Python's json module writes by default (weight
 * statistics can hold them); they become null. Strings are skipped by the regex, so no token is touched.
 */
function parseJsonLenient(text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    const repaired = text.replace(/"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g, (match) => (match[0] === '"' ? match : "null"));
    return JSON.parse(repaired);
  }
}

async function apiFetch(method, path, { json, bytes } = {}) {
  const init = { method, headers: authHeaders({ Accept: "application/json" }) };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (bytes !== undefined) {
    init.headers["Content-Type"] = "application/octet-stream";
    init.body = bytes;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(`cannot reach the mechscope server (${method} ${path})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = parseJsonLenient(text);
    } catch (error) {
      if (response.ok) throw new ApiError(`${method} ${path}: the server's reply is not JSON`, response.status);
    }
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `${method} ${path} failed: HTTP ${response.status}`;
    throw new ApiError(message, response.status);
  }
  return data;
}

const api = {
  get: (path) => apiFetch("GET", path),
  post: (path, body) => apiFetch("POST", path, { json: body }),
  upload: (path, bytes) => apiFetch("POST", path, { bytes }),
  remove: (path) => apiFetch("DELETE", path),
};

// ---------------------------------------------------------------------------------------------------------
// The status line: one line, class busy while any request runs, class error for errors.

let pendingRequests = 0;

function setStatus(text, kind = "") {
  const status = byId("status");
  status.textContent = oneLine(text);
  status.title = String(text ?? "");
  status.classList.toggle("error", kind === "error");
  status.classList.toggle("busy", kind === "busy");
}

function reportError(error) {
  if (error instanceof ApiError) {
    setStatus(error.message, "error");
  } else {
    // A bug in the page rather than an answer from the server: keep the details in the console.
    console.warn(error);
    setStatus(`unexpected problem in the page: ${error && error.message ? error.message : error}`, "error");
  }
}

/**
 * Run task() with "label…" in #status; on success "label — done in 0.4 s", on failure the error's one line.
 * Returns the task's result, or undefined when it failed (the error is already shown).
 */
async function withStatus(label, task) {
  pendingRequests += 1;
  setStatus(`${label}\u2026`, "busy");
  const started = performance.now();
  try {
    const result = await task();
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(`${label} \u2014 done in ${seconds} s`, pendingRequests > 1 ? "busy" : "");
    return result;
  } catch (error) {
    reportError(error);
    return undefined;
  } finally {
    pendingRequests -= 1;
  }
}

/**
 * A ticket for "only the newest request of this kind may draw": a slider dragged quickly sends several
 * requests and their answers can arrive out of order. isCurrent() is false once a newer ticket exists.
 */
const ticketCounters = new Map();

function takeTicket(kind) {
  const number = (ticketCounters.get(kind) || 0) + 1;
  ticketCounters.set(kind, number);
  return { isCurrent: () => ticketCounters.get(kind) === number };
}

// ---------------------------------------------------------------------------------------------------------
// Long jobs (patching, ablation): POST /api/jobs, then follow /api/jobs/{id}/events until a terminal event.

function parseEventData(event) {
  try {
    return parseJsonLenient(event.data);
  } catch (error) {
    throw new ApiError("the job's event stream sent data that is not JSON");
  }
}

/**
 * Start a job and follow it. onProgress gets {done, total} (total may be null).
 * Returns {id, finished, cancel}: finished resolves to {state: "done", result} or {state: "cancelled"} and
 * rejects with an ApiError when the job fails or the stream is lost; cancel() asks the server to stop it.
 */
async function startJob(kind, request, onProgress) {
  const job = await api.post("/api/jobs", { kind, request });
  const jobPath = `/api/jobs/${encodeURIComponent(job.id)}`;
  const source = new EventSource(withTokenParam(`${jobPath}/events`));
  const finished = new Promise((resolve, reject) => {
    const settle = (callback) => (event) => {
      source.close();
      try {
        callback(event);
      } catch (error) {
        reject(error);
      }
    };
    source.addEventListener("progress", (event) => {
      try {
        onProgress(parseEventData(event));
      } catch (error) {
        settle(() => reject(error))();
      }
    });
    source.addEventListener("result", settle((event) => resolve({ state: "done", result: parseEventData(event) })));
    source.addEventListener("cancelled", settle(() => resolve({ state: "cancelled" })));
    // Two things arrive as "error": the server's own `event: error` (a MessageEvent with data) and the
    // browser's connection failure (a plain Event). Either ends the job for us; EventSource would otherwise
    // reconnect and the job would start streaming again from the top.
    source.addEventListener(
      "error",
      settle((event) => {
        if (typeof event.data === "string") {
          const data = parseEventData(event);
          reject(new ApiError(data && data.error ? data.error : "the job failed"));
        } else {
          reject(new ApiError("lost the connection to the job's progress stream"));
        }
      }),
    );
  });
  return {
    id: job.id,
    finished,
    cancel: () => api.remove(jobPath),
  };
}

/** Drive a <progress>: a fraction when the total is known, the indeterminate animation when it is not. */
function showProgress(progress, { done, total }) {
  if (isNumber(total) && total > 0) {
    progress.max = total;
    progress.value = Math.min(done || 0, total);
  } else {
    progress.removeAttribute("value");
  }
}
