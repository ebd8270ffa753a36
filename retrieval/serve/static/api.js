// Calls to the API with the server's token (asked once, kept in this tab's sessionStorage), images fetched with it,
// and file downloads. Without a token everything is a plain request.
"use strict";

const KEY = "slidesearch-token";
let waiting = null;  // a promise for the token while the form is shown

export const token = () => sessionStorage.getItem(KEY) || "";
export const authHeaders = () => (token() ? { Authorization: `Bearer ${token()}` } : {});

// Show the token form and resolve once the user submitted one.
function askToken(message) {
  if (waiting) return waiting;
  const form = document.querySelector("#token-form"), error = document.querySelector("#token-error");
  form.hidden = false;
  error.hidden = !message; error.textContent = message || "";
  document.querySelector("#token").focus();
  waiting = new Promise((resolve) => {
    form.addEventListener("submit", function done(event) {
      event.preventDefault();
      const value = document.querySelector("#token").value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      form.hidden = true; form.removeEventListener("submit", done); waiting = null;
      resolve(value);
    });
  });
  return waiting;
}

// fetch with the token; a 401 asks for the token (again) and retries; other errors throw the server's message.
export async function call(url, options = {}) {
  for (;;) {
    const response = await fetch(url, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (response.status === 401) {
      const had = token();
      sessionStorage.removeItem(KEY);
      await askToken(had ? "that token was refused; try again" : "");
      continue;
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }
}

// Set an <img>'s source: a plain URL without a token, else the image fetched with it (as a blob URL).
export function setImage(img, url) {
  if (!token()) { img.src = url; return; }
  call(url).then((r) => r.blob()).then((blob) => {
    if (img.dataset.blob) URL.revokeObjectURL(img.dataset.blob);
    img.dataset.blob = URL.createObjectURL(blob);
    img.src = img.dataset.blob;
  }).catch(() => { img.alt = `${img.alt} (not loaded)`; });
}

// Save a response as a file, named as the server says (Content-Disposition) or `fallback`.
export async function download(response, fallback) {
  const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: named ? named[1] : fallback });
  document.body.append(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
