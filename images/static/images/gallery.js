// The gallery page: cards from GET /images (cursor pages, fetched as you scroll), uploads through
// POST /upload (XHR, for upload progress), a detail dialog with the label and the model's cover, and
// delete. It uses the caller's own credential: the session cookie (with the CSRF token), or an API
// key kept in sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const config = JSON.parse($("gallery-config").textContent);
const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const KEY_ITEM = "image-service.api-key";
const filter = new URLSearchParams(location.search).get("model_id") || "";

let access = { scopes: [], public_read: true, open_mode: false };
let nextUrl = null;
let loading = false;
let current = null; // the record shown in the detail dialog

const apiKey = () => sessionStorage.getItem(KEY_ITEM);
const can = (scope) => access.scopes.includes(scope);
// An <img> cannot send an Authorization header: while reads are private, the page asks for signed
// URLs (`signed=true`), which work without one until they expire.
const signed = () => (!access.public_read && !access.open_mode ? { signed: "true" } : {});

function headers() {
  const result = { "X-CSRFToken": csrfToken };
  if (apiKey()) result.Authorization = `Api-Key ${apiKey()}`;
  return result;
}

async function reason(response) {
  try {
    const body = await response.json();
    return body.detail || body.error;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// The URL of the original (no preset) or of a preset: the signed one when the page asked for them.
function urlOf(record, preset) {
  if (record.signed_urls) return record.signed_urls[preset || "original"];
  return preset ? `${record.url}?preset=${preset}` : record.url;
}

// As the admin and the commands write sizes (images.bulk.human_bytes): 153 B, 1.4 kB, 2.0 MB.
function formatSize(bytes) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let unit = 0;
  while (bytes >= 1000 && unit < units.length - 1) {
    bytes /= 1000;
    unit += 1;
  }
  return unit ? `${bytes.toFixed(1)} ${units[unit]}` : `${bytes} B`;
}

function timeOf(iso) {
  const when = new Date(iso);
  return el("time", { dateTime: iso, title: iso }, when.toLocaleString(undefined, {
    dateStyle: "medium", timeStyle: "short",
  }));
}

const modelLink = (modelId) => el("a", { href: `/?model_id=${encodeURIComponent(modelId)}` }, modelId);

// --- Images: a derivative first, the original if the derivative cannot be made ---------------------

function setSource(img, urls) {
  const [first, ...rest] = urls;
  if (rest.length) img.addEventListener("error", () => setSource(img, rest), { once: true });
  img.src = first;
}

// --- The grid --------------------------------------------------------------------------------------

const records = new Map(); // image_id -> the record its card shows

function badges(record) {
  const found = [];
  if (record.cover) found.push(el("span", { className: "badge cover" }, "Cover"));
  if (record.label) found.push(el("span", { className: "badge label" }, record.label));
  return found;
}

function card(record) {
  records.set(record.image_id, record);
  const img = el("img", { alt: record.filename, loading: "lazy", decoding: "async" });
  setSource(img, [urlOf(record, "thumb"), urlOf(record)]);
  const item = el(
    "li",
    { className: "card" },
    el("button", { type: "button", className: "thumb", title: `Open ${record.filename}` }, img),
    el("p", { className: "model" }, modelLink(record.model_id), ...badges(record)),
    el("p", { className: "filename" }, record.filename),
    el("p", { className: "facts" }, `${formatSize(record.size)} · ${record.width}×${record.height}`),
    el("p", { className: "facts" }, timeOf(record.uploaded_at)),
  );
  item.dataset.id = record.image_id;
  item.addEventListener("click", (event) => {
    if (!event.target.closest("a")) openDetail(records.get(record.image_id));
  });
  return item;
}

const cardOf = (imageId) => $("grid").querySelector(`[data-id="${imageId}"]`);

// Shows a record's new state (its label, whether it is the cover) in its card.
function update(record) {
  const merged = { ...records.get(record.image_id), ...record };
  cardOf(record.image_id)?.replaceWith(card(merged));
  records.set(record.image_id, merged);
  return merged;
}

function nextLink(header) {
  const match = /<([^>]+)>;\s*rel="next"/.exec(header || "");
  return match ? match[1] : null;
}

async function loadPage() {
  if (loading || !nextUrl) return;
  loading = true;
  const status = $("grid-status");
  status.textContent = "Loading…";
  try {
    const response = await fetch(nextUrl, { headers: headers() });
    if (!response.ok) {
      nextUrl = null;
      status.textContent = `Could not load the images: ${await reason(response)}`;
      return;
    }
    for (const record of await response.json()) {
      if (!cardOf(record.image_id)) $("grid").append(card(record));
    }
    nextUrl = nextLink(response.headers.get("Link"));
    status.textContent = $("grid").children.length ? "" : "No images yet.";
  } catch (error) {
    nextUrl = null;
    status.textContent = `Could not load the images: ${error.message}`;
  } finally {
    loading = false;
  }
  // Observing again reports at once whether the end is still in view (a short page, a tall screen).
  moreObserver.unobserve($("more"));
  if (nextUrl) moreObserver.observe($("more"));
}

const moreObserver = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadPage();
}, { rootMargin: "400px" });

// --- Uploads: one request per file, each with its own progress bar ---------------------------------

function uploadRow(file) {
  const progress = el("progress", { max: 100, value: 0 });
  progress.setAttribute("aria-label", `Upload of ${file.name}`);
  const result = el("span", { className: "result" }, "Waiting");
  const item = el("li", {}, el("span", { className: "name" }, file.name), progress, result);
  $("uploads").append(item);
  return { item, progress, result };
}

function finish(row, status, body) {
  if (status === 200 || status === 201) {
    row.item.classList.add("ok");
    row.result.textContent = status === 201 ? "Added" : "Already there (duplicate)";
    if (status === 201 && (!filter || body.model_id === filter) && !cardOf(body.image_id)) addCard(body);
  } else {
    row.item.classList.add("refused");
    row.result.textContent = status
      ? `Refused (${status}): ${body?.detail || body?.error || "no reason given"}`
      : "Failed: the connection was lost";
  }
}

async function addCard(record) {
  if (signed().signed) {
    // The upload's answer has no signed URLs: ask for them.
    const response = await fetch(`/images/${record.image_id}?signed=true`, { headers: headers() });
    if (!response.ok) return;
    record = await response.json();
  }
  $("grid").prepend(card(record));
  $("grid-status").textContent = "";
}

function upload(file, modelId, label, row) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const body = new FormData();
    body.append("model_id", modelId);
    if (label) body.append("label", label);
    body.append("file", file);
    xhr.open("POST", "/upload");
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) row.progress.value = Math.round((100 * event.loaded) / event.total);
    });
    xhr.addEventListener("load", () => {
      let answer = null;
      try {
        answer = JSON.parse(xhr.responseText);
      } catch {
        // not JSON: a proxy's page, say; the status still tells what happened
      }
      finish(row, xhr.status, answer);
      resolve();
    });
    xhr.addEventListener("error", () => {
      finish(row, 0, null);
      resolve();
    });
    row.result.textContent = "Uploading…";
    xhr.send(body);
  });
}

async function uploadChosen(event) {
  event.preventDefault();
  const input = $("files");
  const files = [...input.files];
  $("upload-error").textContent = files.length ? "" : "Choose at least one image.";
  if (!files.length) return;
  const modelId = $("upload-model").value.trim();
  const label = $("upload-label").value.trim();
  $("uploads").replaceChildren();
  const rows = files.map(uploadRow);
  const button = $("upload-button");
  button.disabled = true;
  for (const [i, file] of files.entries()) await upload(file, modelId, label, rows[i]);
  button.disabled = false;
  input.value = "";
}

function setUpDropZone() {
  const zone = $("dropzone");
  const over = (on) => (event) => {
    event.preventDefault();
    zone.classList.toggle("over", on);
  };
  zone.addEventListener("dragover", over(true));
  zone.addEventListener("dragleave", over(false));
  zone.addEventListener("drop", (event) => {
    over(false)(event);
    $("files").files = event.dataTransfer.files;
  });
}

// --- The detail dialog -----------------------------------------------------------------------------

function openDetail(record) {
  current = record;
  $("detail-title").textContent = record.filename;
  const img = el("img", { id: "detail-image", alt: record.filename }); // new: no listener of the last
  $("detail-image").replaceWith(img);
  setSource(img, [urlOf(record, "full"), urlOf(record)]);
  const facts = [
    ["Model ID", modelLink(record.model_id)],
    ["Filename", record.filename],
    ["Image ID", record.image_id],
    ["Type", record.content_type],
    ["Size", `${formatSize(record.size)} (${record.size.toLocaleString()} bytes)`],
    ["Dimensions", `${record.width}×${record.height} px`],
    ["Uploaded", timeOf(record.uploaded_at)],
    ["Uploaded by", record.uploaded_by || "—"],
    ["Label", record.label || "—"],
    ["Cover", record.cover ? "Yes: the model's picture" : "No"],
    ["SHA-256", el("code", {}, record.sha256)],
  ];
  $("detail-meta").replaceChildren(...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
  const sizes = Object.entries(config.presets).map(([name, box]) =>
    sizeLink(urlOf(record, name), `${name} (${box} px)`));
  $("detail-links").replaceChildren("Open: ", sizeLink(urlOf(record), "Original"), ...sizes);
  $("detail-url").value = record.url;
  $("detail-status").textContent = "";
  $("label-form").hidden = !can("write");
  $("detail-label").value = record.label || "";
  $("make-cover").hidden = !can("write") || record.cover;
  $("delete").hidden = !can("admin");
  $("detail").showModal();
}

const sizeLink = (url, text) => el("a", { href: url, target: "_blank", rel: "noopener" }, text);

async function sendJson(method, url, body) {
  const json = { ...headers(), "Content-Type": "application/json" };
  return fetch(url, { method, headers: json, body: JSON.stringify(body) });
}

async function setLabel(event) {
  event.preventDefault();
  const label = $("detail-label").value.trim() || null; // empty clears it
  const response = await sendJson("PATCH", `/images/${current.image_id}`, { label });
  if (!response.ok) {
    $("detail-status").textContent = `Label not set: ${await reason(response)}`;
    return;
  }
  openDetail(update({ label: (await response.json()).label, image_id: current.image_id }));
  $("detail-status").textContent = label ? `Label set to ${label}.` : "Label cleared.";
}

async function makeCover() {
  const record = current;
  const response = await sendJson("PUT", `/models/${encodeURIComponent(record.model_id)}/cover`, {
    image_id: record.image_id,
  });
  if (!response.ok) {
    $("detail-status").textContent = `Not made the cover: ${await reason(response)}`;
    return;
  }
  for (const other of records.values()) {
    if (other.model_id === record.model_id && other.cover) update({ image_id: other.image_id, cover: false });
  }
  openDetail(update({ image_id: record.image_id, cover: true }));
  $("detail-status").textContent = `This is now the picture of model ${record.model_id}.`;
}

async function copyUrl() {
  try {
    await navigator.clipboard.writeText(current.url);
    $("detail-status").textContent = "URL copied.";
  } catch {
    $("detail-url").select();
    $("detail-status").textContent = "Copying is not allowed here: press Ctrl+C to copy the selected URL.";
  }
}

async function deleteCurrent() {
  const record = current;
  if (!confirm(`Delete ${record.filename} (model ${record.model_id})? This cannot be undone.`)) return;
  const response = await fetch(`/images/${record.image_id}`, { method: "DELETE", headers: headers() });
  if (response.status !== 204) {
    $("detail-status").textContent = `Not deleted: ${await reason(response)}`;
    return;
  }
  cardOf(record.image_id)?.remove();
  $("detail").close();
  $("grid-status").textContent = `Deleted ${record.filename}.`;
}

// --- Access: who the caller is, and the pasted API key ---------------------------------------------

async function whoami(key = apiKey()) {
  const response = await fetch("/api/whoami", {
    headers: key ? { Authorization: `Api-Key ${key}` } : {},
  });
  if (!response.ok) throw new Error(await reason(response));
  return response.json();
}

function describe() {
  if (access.open_mode) return "Development mode: anyone may upload and delete.";
  const may = can("admin") ? "upload and delete" : can("write") ? "upload" : "view";
  if (access.name) return `Signed in as ${access.name}${access.session ? "" : " (API key)"}: you may ${may}.`;
  return can("read") ? "Not signed in: read-only." : "Not signed in: sign in to see the images.";
}

async function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  try {
    await whoami(key);
  } catch (error) {
    $("key-error").textContent = error.message;
    return;
  }
  sessionStorage.setItem(KEY_ITEM, key);
  location.reload();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_ITEM);
  location.reload();
}

async function start() {
  access = await whoami().catch((error) => {
    if (!apiKey()) throw error;
    sessionStorage.removeItem(KEY_ITEM); // revoked since it was pasted: go on without it
    $("key-error").textContent = `The API key stopped working: ${error.message}`;
    $("key-panel").open = true;
    return whoami();
  });
  $("who").textContent = describe();
  // A pasted key speaks for this tab: no "Sign in" beside it, and "Forget key" instead of another.
  $("sign-in")?.toggleAttribute("hidden", Boolean(apiKey()));
  $("key-panel").hidden = Boolean(apiKey());
  $("forget-key").hidden = !apiKey();
  $("upload").hidden = !can("write");
  if (!can("read")) {
    $("grid-status").textContent = "Sign in, or use an API key, to see the images.";
    return;
  }
  const query = { limit: config.pageSize, ...(filter && { model_id: filter }), ...signed() };
  nextUrl = `/images?${new URLSearchParams(query)}`;
  moreObserver.observe($("more"));
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("upload-form").addEventListener("submit", uploadChosen);
  $("copy-url").addEventListener("click", copyUrl);
  $("delete").addEventListener("click", deleteCurrent);
  $("label-form").addEventListener("submit", setLabel);
  $("make-cover").addEventListener("click", makeCover);
  setUpDropZone();
  start().catch((error) => {
    $("who").textContent = `Could not check access: ${error.message}`;
  });
});
