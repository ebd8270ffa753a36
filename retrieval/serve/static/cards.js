// Result cards: a slide hit (what a pathologist reads first: label, patient, case, organ, stain, the report
// sentence; slidesearch's own columns folded away) and a case hit (its slides by stain).
"use strict";

import { call, download, setImage } from "./api.js";

const FIRST = ["label", "diagnosis", "patient_id", "case_id", "organ", "stain"];
// never shown: bookkeeping of the index, not of the slide
const INTERNAL = new Set(["sha256", "fingerprint", "status", "error", "slide_row", "patch_row_start", "mtime_ns",
  "entropy", "max_mass"]);

export const enc = encodeURIComponent;
export const slideURL = (id) => `/api/slides/${enc(id)}`;

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function image(url, attrs) {
  const img = el("img", attrs);
  setImage(img, url);
  return img;
}

const shown = (value) => value !== null && value !== undefined && value !== "";

function pairs(entries) {
  const dl = el("dl");
  for (const [key, value] of entries) dl.append(el("dt", { text: key }), el("dd", { text: String(value), title: String(value) }));
  return dl;
}

// The hit's report sentence, matched words in <mark>; else (report search) the slide's own report text.
function reportLine(hit, ctx) {
  const r = hit.report || {};
  if (r.sentence) {
    const parts = []; let at = 0;
    for (const [start, end] of r.highlights || []) {
      if (start < at) continue;
      parts.push(r.sentence.slice(at, start), el("mark", { text: r.sentence.slice(start, end) })); at = end;
    }
    parts.push(r.sentence.slice(at));
    return [el("p", { class: "report", title: `report${r.via ? ` (${r.via})` : ""}` }, ...parts)];
  }
  const lines = [];
  if (r.attributes) {
    lines.push(el("p", { class: "report-attributes", text: "attributes: " + Object.entries(r.attributes)
      .map(([name, score]) => `${name} ${Number(score).toFixed(2)}`).join(", ") }));
  }
  const own = ctx.reportColumn && hit.metadata[ctx.reportColumn];
  if (shown(own)) lines.push(el("p", { class: "report", title: "the slide's report", text: String(own) }));
  return lines;
}

// Metadata split in what the user wrote (label, patient, … first) and slidesearch's technical columns.
function metadataParts(meta, ctx) {
  const user = [], technical = [];
  const keys = [...FIRST.filter((k) => k in meta), ...Object.keys(meta).filter((k) => !FIRST.includes(k))];
  for (const key of keys) {
    const value = meta[key];
    if (!shown(value) || INTERNAL.has(key) || key === "slide_id" || key === ctx.reportColumn) continue;
    (ctx.technical.has(key) ? technical : user).push([key, value]);
  }
  return [pairs(user), el("details", { class: "technical" }, el("summary", { text: "technical" }), pairs(technical))];
}

// The hit's matched patches as a QuPath GeoJSON file (the one `search … --geojson` writes), fetched with the
// token; none for a query the server cannot recompute (an uploaded image, a case or report search).
function geojsonLink(hit, ctx) {
  const url = ctx.geojsonURL(hit);
  if (!url) return [];
  const link = el("a", { class: "geojson", href: url, title: "the matched patches as QuPath annotations",
    text: "QuPath GeoJSON" });
  link.addEventListener("click", async (event) => {
    event.preventDefault(); event.stopPropagation();
    try { await download(await call(url), `${hit.slide_id}.geojson`); } catch (err) { ctx.onError(`GeoJSON: ${err.message}`); }
  });
  return [link];
}

function explanation(hit) {
  const protos = el("ul", {}, ...hit.prototypes.map((p) =>
    el("li", { text: `${p.name}: mass ${p.mass.toFixed(2)}, sim ${p.similarity.toFixed(2)}` })));
  const crops = el("div", { class: "crops" }, ...hit.patches.map((p) => el("figure", {},
    image(`${slideURL(hit.slide_id)}/region.jpeg?x=${p.x}&y=${p.y}&w=${p.size}&h=${p.size}&max_px=96`,
      { alt: `patch at ${p.x}, ${p.y}` }),
    el("figcaption", { text: p.score.toFixed(2) }))));
  return [...(hit.prototypes.length ? [el("div", { class: "muted", text: "prototypes" }), protos] : []),
    ...(hit.patches.length ? [el("div", { class: "muted", text: "best patches" }), crops] : [])];
}

export function slideCard(hit, ctx) {
  const card = el("article", { class: "card", "data-slide-id": hit.slide_id },
    el("h3", {}, el("span", { text: `${hit.rank}. ${hit.slide_id}` }), el("span", { class: "score", text: hit.score.toFixed(3) })),
    image(`${slideURL(hit.slide_id)}/thumbnail.png?max_px=256`, { class: "thumb", alt: hit.slide_id }),
    ...reportLine(hit, ctx), ...metadataParts(hit.metadata, ctx), ...explanation(hit), ...geojsonLink(hit, ctx));
  card.addEventListener("click", (event) => {
    if (!event.target.closest("details")) ctx.onOpen(hit.slide_id, hit);
  });
  return card;
}

export function caseCard(hit, ctx) {
  const score = Object.fromEntries(hit.slides.map((s) => [s.slide_id, s.score]));
  const matched = hit.matched;
  const stains = el("div", { class: "stains" }, ...Object.entries(hit.stains).map(([stain, ids]) =>
    el("div", { class: "stain-row" }, el("span", { class: "stain", text: stain }), ...ids.map((id) => {
      const figure = el("figure", { class: id === matched.slide_id ? "case-slide matched" : "case-slide", "data-slide-id": id },
        image(`${slideURL(id)}/thumbnail.png?max_px=128`, { alt: id }),
        el("figcaption", { text: `${id} ${score[id].toFixed(2)}` }));
      figure.addEventListener("click", (event) => {
        event.stopPropagation();
        ctx.onOpen(id, id === matched.slide_id ? matched : null);
      });
      return figure;
    }))));
  const card = el("article", { class: "card case", "data-case-id": hit.case_id },
    el("h3", {}, el("span", { text: `${hit.rank}. case ${hit.case_id}` }), el("span", { class: "score", text: hit.score.toFixed(3) })),
    stains,
    el("p", { class: "muted", text: `best match: ${matched.slide_id} (${matched.stain}), ${matched.score.toFixed(3)}` }),
    ...reportLine(matched, ctx), ...metadataParts(matched.metadata, ctx), ...explanation(matched));
  card.addEventListener("click", (event) => {
    if (!event.target.closest("details")) ctx.onOpen(matched.slide_id, matched);
  });
  return card;
}
