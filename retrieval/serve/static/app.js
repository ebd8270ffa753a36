// slidesearch page: search (text, patch upload or region, slide id, case, report), result cards, a CSV download,
// an OpenSeadragon viewer with the query's heatmap and matching patches outlined, and "more like this region".
// State lives in the URL (an uploaded image does not).
"use strict";

import { authHeaders, call, download } from "./api.js";
import { caseCard, el, slideCard, slideURL } from "./cards.js";

const $ = (sel) => document.querySelector(sel);
const state = { mode: "text", q: "", k: 10, where: "", exclude_same: "", smode: "proto", source: "", fusion: "mean",
  open: "", heat: false };
const PLACEHOLDER = { text: "poorly differentiated adenocarcinoma with necrosis", slide: "an indexed slide id",
  patch: "a region SLIDE_ID@x,y,w,h, or choose an image file", case: "a case id, or a slide id (its case is the query)" };
let upload = null;       // the File of a patch upload (not kept in the URL)
let result = null;       // the last search result (as `search --json`)
let viewer = null, heatItem = null, picking = false, pickStart = null, pickBox = null;
const ctx = { technical: new Set(), reportColumn: null, onOpen: (id, hit) => { state.open = id; writeURL(true); openViewer(id, hit); },
  onError: (message) => showError(message), geojsonURL };

// The page's GeoJSON file of a slide hit for the current text, slide or region query (null otherwise).
function geojsonURL(hit) {
  if (!state.q || !["text", "slide", "patch"].includes(state.mode)) return null;
  const p = new URLSearchParams({ kind: state.mode, q: state.q, rank: hit.rank });
  if (state.mode === "slide") p.set("mode", state.smode);
  return `${slideURL(hit.slide_id)}/matches.geojson?${p}`;
}

function readURL() {
  const p = new URLSearchParams(location.search);
  for (const key of Object.keys(state)) if (p.has(key)) state[key] = p.get(key);
  state.k = Number(state.k) || 10;
  state.heat = state.heat === true || state.heat === "1";
}

function writeURL(push) {
  const p = new URLSearchParams();
  for (const [key, value] of Object.entries(state)) {
    if (key === "heat") { if (value) p.set(key, "1"); }
    else if (value !== "" && value !== null && !(key === "fusion" && value === "mean")) p.set(key, String(value));
  }
  const url = `${location.pathname}?${p}`;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

function syncForm() {
  document.querySelectorAll("input[name=mode]").forEach((r) => { r.checked = r.value === state.mode; });
  const report = state.mode === "report";
  $("#q").hidden = report; $("#report").hidden = !report;
  $(report ? "#report" : "#q").value = state.q;
  $("#k").value = state.k; $("#where").value = state.where; $("#exclude").value = state.exclude_same;
  $("#smode").value = state.smode; $("#source").value = state.source; $("#fusion").value = state.fusion;
  $("#heatmap").checked = state.heat;
  $("#file").hidden = state.mode !== "patch";
  $("#smode").hidden = state.mode !== "slide";
  $("#fusion").hidden = state.mode !== "case";
  $("#source").hidden = state.mode !== "text" || !ctx.reportColumn;
  $("#exclude").hidden = state.mode === "text" || state.mode === "report";
  if (!report) $("#q").placeholder = PLACEHOLDER[state.mode];
  $("#hint").textContent = state.mode === "patch" && upload && !state.q ? `uploaded image: ${upload.name} (not kept in the URL)` : "";
}

function readForm() {
  state.mode = document.querySelector("input[name=mode]:checked").value;
  state.q = (state.mode === "report" ? $("#report") : $("#q")).value.trim();
  state.k = Number($("#k").value) || 10; state.where = $("#where").value.trim();
  state.exclude_same = $("#exclude").value.trim(); state.smode = $("#smode").value;
  state.source = $("#source").value; state.fusion = $("#fusion").value;
}

function showError(message) {
  const filter = /--where|filter/.test(message);
  $("#where-error").hidden = !filter; $("#where-error").textContent = filter ? message : "";
  $("#error").hidden = filter || !message; $("#error").textContent = filter ? "" : message;
}

// [url, fetch options] of the current search; `format` csv asks for the table instead of JSON.
function searchRequest(format) {
  const p = new URLSearchParams({ k: state.k });
  if (state.where) p.set("where", state.where);
  if (format) p.set("format", format);
  const excluded = () => { if (state.exclude_same) p.set("exclude_same", state.exclude_same); };
  switch (state.mode) {
    case "text":
      p.set("q", state.q); if (state.source) p.set("source", state.source);
      return [`/api/search/text?${p}`];
    case "slide":
      excluded(); p.set("slide_id", state.q); p.set("mode", state.smode);
      return [`/api/search/slide?${p}`];
    case "case":
      excluded(); p.set("q", state.q); p.set("fusion", state.fusion);
      return [`/api/search/case?${p}`];
    case "report":
      return [`/api/search/report?${p}`, { method: "POST", body: JSON.stringify({ text: state.q }),
        headers: { "Content-Type": "application/json" } }];
    default:
      if (state.q) { excluded(); p.set("region", state.q); return [`/api/search/patch?${p}`]; }
      return [`/api/search/patch?${p}`, { method: "POST", body: uploadForm() }];
  }
}

function uploadForm() {
  const body = new FormData(); body.append("image", upload);
  return body;
}

async function runSearch() {
  showError("");
  if (!state.q && !(state.mode === "patch" && upload)) { showError("type a query first"); return; }
  $("#go").disabled = true;
  try {
    result = await (await call(...searchRequest())).json();
    renderResults();
    if (state.open) openViewer(state.open, hitOf(state.open));
  } catch (err) {
    showError(err.message); result = null; renderResults();
  } finally { $("#go").disabled = false; }
}

// The slide hit of a slide id in the current result (a case result: its matched slide), or null.
function hitOf(slideId) {
  if (!result) return null;
  for (const hit of result.hits) {
    const slide = result.kind === "case" ? hit.matched : hit;
    if (slide.slide_id === slideId) return slide;
  }
  return null;
}

function about() {
  const n = result.hits.length, what = result.kind === "case" ? "cases" : "slides";
  const d = result.details || {};
  if (result.kind === "report") {
    return `${n} ${what} for the report's attributes: ${(d.attributes || []).join(", ")}` +
      (d.left_out && d.left_out.length ? ` (left out: ${d.left_out.join("; ")})` : "");
  }
  if (result.kind === "case") return `${n} ${what} like case ${d.query_case}`;
  return `${n} ${what}` + (d.expanded_with ? `, query expanded with ${d.expanded_with}` : "");
}

function renderResults() {
  $("#results-bar").hidden = !result;
  if (!result) { $("#results").replaceChildren(); return; }
  $("#results-about").textContent = about();
  const card = result.kind === "case" ? caseCard : slideCard;
  const cards = result.hits.map((hit) => card(hit, ctx));
  $("#results").replaceChildren(...cards);
  if (!cards.length) $("#results").append(el("p", { class: "muted", text: "nothing matched" }));
}

async function downloadCSV() {
  try {
    await download(await call(...searchRequest("csv")), `slidesearch-${state.mode}.csv`);
  } catch (err) { showError(`CSV: ${err.message}`); }
}

function openViewer(slideId, hit) {
  if (typeof OpenSeadragon === "undefined") { showError("the viewer's OpenSeadragon is missing: run `npm ci`"); return; }
  document.querySelectorAll(".card").forEach((c) => c.classList.toggle("selected",
    c.dataset.slideId === slideId || !!c.querySelector(`.case-slide.matched[data-slide-id="${CSS.escape(slideId)}"]`)));
  $("#viewer-panel").hidden = false;
  $("#viewer-title").textContent = slideId;
  const tiles = `${slideURL(slideId)}/image.dzi`;
  heatItem = null;
  if (!viewer) {  // tiles come by fetch, so they carry the token (none needed: the same, without a header)
    viewer = OpenSeadragon({ id: "osd", prefixUrl: "/vendor/openseadragon/images/", tileSources: tiles,
      showNavigator: true, crossOriginPolicy: false, gestureSettingsMouse: { clickToZoom: false },
      loadTilesWithAjax: true, ajaxHeaders: authHeaders() });
    viewer.addHandler("canvas-press", onPress);
    viewer.addHandler("canvas-drag", onDrag);
    viewer.addHandler("canvas-release", onRelease);
  } else {
    viewer.setAjaxHeaders(authHeaders());
    viewer.open(tiles);
  }
  viewer.addOnceHandler("open", () => { outline(hit); if (state.heat) showHeatmap(); });
}

function outline(hit) {
  viewer.clearOverlays();
  const region = state.mode === "patch" && /^(.+)@(\d+),(\d+),(\d+),(\d+)$/.exec(state.q);
  if (region && region[1] === state.open) {  // the query region itself, dashed
    const [x, y, w, h] = region.slice(2).map(Number);
    viewer.addOverlay({ element: el("div", { class: "region-outline", title: "query region" }),
      location: viewer.viewport.imageToViewportRectangle(x, y, w, h) });
  }
  if (!hit) return;
  for (const p of hit.patches) {
    const rect = viewer.viewport.imageToViewportRectangle(p.x, p.y, p.size, p.size);
    viewer.addOverlay({ element: el("div", { class: "patch-outline", title: `score ${p.score.toFixed(3)}` }), location: rect });
  }
}

// The heatmap's query: the search itself, a case's first query slide, or a report's affirmed attributes.
function heatmapQuery() {
  const d = (result && result.details) || {};
  if (state.mode === "case") return d.query_slides && d.query_slides.length ? { kind: "slide", q: d.query_slides[0].slide_id } : null;
  if (state.mode === "report") return d.attributes && d.attributes.length ? { kind: "text", q: d.attributes.join(", ") } : null;
  return { kind: state.mode, q: state.q };
}

async function showHeatmap() {
  hideHeatmap();
  const slideId = state.open;
  try {
    let response;
    if (state.mode === "patch" && !state.q) {
      response = await call(`${slideURL(slideId)}/heatmap.png`, { method: "POST", body: uploadForm() });
    } else {
      const query = heatmapQuery();
      if (!query) return;
      response = await call(`${slideURL(slideId)}/heatmap.png?${new URLSearchParams(query)}`);
    }
    const url = URL.createObjectURL(await response.blob());
    if (slideId !== state.open) return;
    viewer.addTiledImage({ tileSource: { type: "image", url }, x: 0, y: 0, width: 1, opacity: 0.55, loadTilesWithAjax: false,
      success: (event) => { heatItem = event.item; } });
    const h = response.headers;
    $("#heat-range").textContent = `similarity ${Number(h.get("X-Heatmap-Min")).toFixed(2)} – ${Number(h.get("X-Heatmap-Max")).toFixed(2)}`;
  } catch (err) { showError(`heatmap: ${err.message}`); }
}

function hideHeatmap() {
  if (heatItem) viewer.world.removeItem(heatItem);
  heatItem = null; $("#heat-range").textContent = "";
}

// "More like this region": click (one patch) or drag (a rectangle) on the slide while picking.
function setPicking(on) {
  picking = on;
  $("#region-btn").classList.toggle("active", on);
  $("#osd").classList.toggle("picking", on);
}

function imagePoint(event) { return viewer.viewport.viewerElementToImageCoordinates(event.position); }

function onPress(event) { if (picking) { pickStart = imagePoint(event); event.preventDefaultAction = true; } }

function onDrag(event) {
  if (!picking || !pickStart) return;
  event.preventDefaultAction = true;
  const p = imagePoint(event);
  const rect = viewer.viewport.imageToViewportRectangle(Math.min(p.x, pickStart.x), Math.min(p.y, pickStart.y),
    Math.abs(p.x - pickStart.x), Math.abs(p.y - pickStart.y));
  if (pickBox) viewer.updateOverlay(pickBox, rect);
  else { pickBox = el("div", { class: "region-outline" }); viewer.addOverlay({ element: pickBox, location: rect }); }
}

function onRelease(event) {
  if (!picking || !pickStart) return;
  const end = imagePoint(event), start = pickStart;
  pickStart = null;
  if (pickBox) { viewer.removeOverlay(pickBox); pickBox = null; }
  const size = viewer.world.getItemAt(0).getContentSize();
  const hit = hitOf(state.open);
  const patch = (hit && hit.metadata.patch_size) || 448;
  let x = Math.min(start.x, end.x), y = Math.min(start.y, end.y);
  let w = Math.abs(end.x - start.x), h = Math.abs(end.y - start.y);
  if (w < patch / 4 || h < patch / 4) { x = end.x - patch / 2; y = end.y - patch / 2; w = h = patch; }
  w = Math.min(Math.round(w), size.x); h = Math.min(Math.round(h), size.y);
  x = Math.max(0, Math.min(Math.round(x), size.x - w)); y = Math.max(0, Math.min(Math.round(y), size.y - h));
  setPicking(false);
  Object.assign(state, { mode: "patch", q: `${state.open}@${x},${y},${w},${h}` });
  syncForm(); writeURL(true); runSearch();
}

async function loadInfo() {
  try {
    const info = await (await call("/api/info")).json();
    ctx.technical = new Set(info.served.technical_columns || []);
    ctx.reportColumn = info.reports ? (info.reports.column || "report") : null;
    $("#index-info").textContent = `${info.counts.slides_ok} slides, ${info.counts.patches} patches · ` +
      `encoder ${info.encoder.name} · version ${info.version}` + (info.reports ? " · reports indexed" : "");
  } catch (err) { showError(`index info: ${err.message}`); }
}

async function init() {
  readURL();
  await loadInfo();  // asks for the token first when the server needs one
  syncForm();
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => {
    const typed = (state.mode === "report" ? $("#report") : $("#q")).value;  // kept across the switch of field
    readForm(); state.q = typed.trim(); syncForm();
  }));
  $("#file").addEventListener("change", () => { upload = $("#file").files[0] || null; $("#q").value = ""; readForm(); syncForm(); });
  $("#search").addEventListener("submit", (event) => {
    event.preventDefault(); readForm(); state.open = ""; $("#viewer-panel").hidden = true; writeURL(true); runSearch();
  });
  $("#csv").addEventListener("click", downloadCSV);
  $("#heatmap").addEventListener("change", () => {
    state.heat = $("#heatmap").checked; writeURL(false);
    if (state.heat) showHeatmap(); else hideHeatmap();
  });
  $("#region-btn").addEventListener("click", () => setPicking(!picking));
  $("#close-viewer").addEventListener("click", () => { $("#viewer-panel").hidden = true; state.open = ""; writeURL(true); });
  window.addEventListener("popstate", () => { readURL(); syncForm(); if (state.q) runSearch(); });
  if (state.q) runSearch();
}

init();
