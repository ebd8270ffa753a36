// slidesearch page: search (text, patch upload or region, slide id), result cards, an OpenSeadragon viewer
// with the query's heatmap and matching patches outlined, and "more like this region". State lives in the URL.
"use strict";

const $ = (sel) => document.querySelector(sel);
const HIDDEN_COLUMNS = new Set(["path", "sha256", "size_bytes", "mtime_ns", "fingerprint", "status", "error",
  "slide_row", "patch_row_start", "mpp_source", "entropy", "max_mass"]);
const state = { mode: "text", q: "", k: 10, where: "", exclude_same: "", smode: "proto", open: "", heat: false, source: "" };
let upload = null;       // the File of a patch upload (not kept in the URL)
let result = null;       // the last search result (as `search --json`)
let viewer = null, heatItem = null, picking = false, pickStart = null, pickBox = null;

const enc = encodeURIComponent;
const slideURL = (id) => `/api/slides/${enc(id)}`;

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
    else if (value !== "" && value !== null) p.set(key, String(value));
  }
  const url = `${location.pathname}?${p}`;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

function syncForm() {
  document.querySelectorAll("input[name=mode]").forEach((r) => { r.checked = r.value === state.mode; });
  $("#q").value = state.q; $("#k").value = state.k; $("#where").value = state.where;
  $("#exclude").value = state.exclude_same; $("#smode").value = state.smode; $("#heatmap").checked = state.heat;
  const patch = state.mode === "patch";
  $("#file").hidden = !patch;
  $("#q").placeholder = { text: "poorly differentiated adenocarcinoma with necrosis", slide: "an indexed slide id",
    patch: "a region SLIDE_ID@x,y,w,h, or choose an image file" }[state.mode];
  $("#hint").textContent = patch && upload && !state.q ? `uploaded image: ${upload.name} (not kept in the URL)` : "";
}

function readForm() {
  state.mode = document.querySelector("input[name=mode]:checked").value;
  state.q = $("#q").value.trim(); state.k = Number($("#k").value) || 10; state.where = $("#where").value.trim();
  state.exclude_same = $("#exclude").value.trim(); state.smode = $("#smode").value;
}

function showError(message) {
  const filter = /--where|filter/.test(message);
  $("#where-error").hidden = !filter; $("#where-error").textContent = filter ? message : "";
  $("#error").hidden = filter || !message; $("#error").textContent = filter ? "" : message;
}

async function call(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function searchRequest() {
  const p = new URLSearchParams({ k: state.k });
  if (state.where) p.set("where", state.where);
  if (state.mode === "text") { p.set("q", state.q); if (state.source) p.set("source", state.source); return [`/api/search/text?${p}`]; }
  if (state.exclude_same) p.set("exclude_same", state.exclude_same);
  if (state.mode === "slide") { p.set("slide_id", state.q); p.set("mode", state.smode); return [`/api/search/slide?${p}`]; }
  if (state.q) { p.set("region", state.q); return [`/api/search/patch?${p}`]; }
  p.delete("exclude_same");
  const body = new FormData(); body.append("image", upload);
  return [`/api/search/patch?${p}`, { method: "POST", body }];
}

async function runSearch() {
  showError("");
  if (!state.q && !(state.mode === "patch" && upload)) { showError("type a query first"); return; }
  $("#go").disabled = true;
  try {
    result = await (await call(...searchRequest())).json();
    renderCards();
    if (state.open) {
      const hit = result.hits.find((h) => h.slide_id === state.open);
      openViewer(state.open, hit || null);
    }
  } catch (err) {
    showError(err.message); result = null; $("#results").replaceChildren();
  } finally { $("#go").disabled = false; }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

// The hit's matching report sentence, its matched words in <mark> (text search over indexed reports).
function reportLine(hit) {
  const r = hit.report;
  if (!r || !r.sentence) return [];
  const parts = []; let at = 0;
  for (const [start, end] of r.highlights || []) {
    if (start < at) continue;
    parts.push(r.sentence.slice(at, start), el("mark", { text: r.sentence.slice(start, end) })); at = end;
  }
  parts.push(r.sentence.slice(at));
  return [el("p", { class: "report", title: `report (${r.via})` }, ...parts)];
}

function renderCards() {
  const cards = result.hits.map((hit) => {
    const meta = el("dl");
    for (const [key, value] of Object.entries(hit.metadata)) {
      if (HIDDEN_COLUMNS.has(key) || value === null || value === "") continue;
      meta.append(el("dt", { text: key }), el("dd", { text: String(value), title: String(value) }));
    }
    const protos = el("ul", {}, ...hit.prototypes.map((p) =>
      el("li", { text: `${p.name}: mass ${p.mass.toFixed(2)}, sim ${p.similarity.toFixed(2)}` })));
    const crops = el("div", { class: "crops" }, ...hit.patches.map((p) => el("figure", {},
      el("img", { src: `${slideURL(hit.slide_id)}/region.jpeg?x=${p.x}&y=${p.y}&w=${p.size}&h=${p.size}&max_px=96`,
        alt: `patch at ${p.x}, ${p.y}`, loading: "lazy" }),
      el("figcaption", { text: p.score.toFixed(2) }))));
    const card = el("article", { class: "card", "data-slide-id": hit.slide_id },
      el("h3", {}, el("span", { text: `${hit.rank}. ${hit.slide_id}` }), el("span", { class: "score", text: hit.score.toFixed(3) })),
      el("img", { class: "thumb", src: `${slideURL(hit.slide_id)}/thumbnail.png?max_px=256`, alt: hit.slide_id, loading: "lazy" }),
      meta, ...reportLine(hit), el("div", { class: "muted", text: "prototypes" }), protos, el("div", { class: "muted", text: "best patches" }), crops,
      ...geojsonLink(hit));
    card.addEventListener("click", () => { state.open = hit.slide_id; writeURL(true); openViewer(hit.slide_id, hit); });
    return card;
  });
  $("#results").replaceChildren(...cards);
  if (!cards.length) $("#results").append(el("p", { class: "muted", text: "no slides matched" }));
}

// The hit's matched patches as a QuPath GeoJSON file (the one `search … --geojson` writes); not for an uploaded image.
function geojsonLink(hit) {
  if (!state.q) return [];
  const p = new URLSearchParams({ kind: state.mode, q: state.q, rank: hit.rank });
  if (state.mode === "slide") p.set("mode", state.smode);
  const link = el("a", { class: "geojson", href: `${slideURL(hit.slide_id)}/matches.geojson?${p}`,
    download: `${hit.slide_id}.geojson`, title: "the matched patches as QuPath annotations", text: "QuPath GeoJSON" });
  link.addEventListener("click", (event) => event.stopPropagation());
  return [link];
}

function openViewer(slideId, hit) {
  if (typeof OpenSeadragon === "undefined") { showError("the viewer's OpenSeadragon is missing: run `npm ci`"); return; }
  document.querySelectorAll(".card").forEach((c) => c.classList.toggle("selected", c.dataset.slideId === slideId));
  $("#viewer-panel").hidden = false;
  $("#viewer-title").textContent = slideId;
  const tiles = `${slideURL(slideId)}/image.dzi`;
  heatItem = null;
  if (!viewer) {
    viewer = OpenSeadragon({ id: "osd", prefixUrl: "/vendor/openseadragon/images/", tileSources: tiles,
      showNavigator: true, crossOriginPolicy: false, gestureSettingsMouse: { clickToZoom: false } });
    viewer.addHandler("canvas-press", onPress);
    viewer.addHandler("canvas-drag", onDrag);
    viewer.addHandler("canvas-release", onRelease);
  } else {
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

async function heatmapURL(slideId) {
  if (state.mode === "patch" && !state.q) {
    const body = new FormData(); body.append("image", upload);
    const response = await call(`${slideURL(slideId)}/heatmap.png`, { method: "POST", body });
    return [URL.createObjectURL(await response.blob()), response.headers];
  }
  const p = new URLSearchParams({ kind: state.mode, q: state.q });
  const response = await call(`${slideURL(slideId)}/heatmap.png?${p}`);
  return [URL.createObjectURL(await response.blob()), response.headers];
}

async function showHeatmap() {
  hideHeatmap();
  const slideId = state.open;
  try {
    const [url, headers] = await heatmapURL(slideId);
    if (slideId !== state.open) return;
    viewer.addTiledImage({ tileSource: { type: "image", url }, x: 0, y: 0, width: 1, opacity: 0.55,
      success: (event) => { heatItem = event.item; } });
    $("#heat-range").textContent = `similarity ${Number(headers.get("X-Heatmap-Min")).toFixed(2)} – ${Number(headers.get("X-Heatmap-Max")).toFixed(2)}`;
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
  const hit = result && result.hits.find((h) => h.slide_id === state.open);
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

function init() {
  readURL(); syncForm();
  fetch("/api/info").then((r) => r.json()).then((info) => {
    $("#index-info").textContent = `${info.counts.slides_ok} slides, ${info.counts.patches} patches · ` +
      `encoder ${info.encoder.name} · version ${info.version}`;
  }).catch(() => {});
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => {
    readForm(); syncForm();
  }));
  $("#file").addEventListener("change", () => { upload = $("#file").files[0] || null; $("#q").value = ""; readForm(); syncForm(); });
  $("#search").addEventListener("submit", (event) => {
    event.preventDefault(); readForm(); state.open = ""; writeURL(true); runSearch();
  });
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
