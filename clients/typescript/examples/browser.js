// The example page's script: plain JavaScript on the built client (npm run build), no bundler.
import { ApiError, createClient } from "../dist/index.js";

const service = new URLSearchParams(location.search).get("service") ?? "http://127.0.0.1:8000";
const form = document.querySelector("#upload");
const status = document.querySelector("#status");
const thumbs = document.querySelector("#thumbs");
const more = document.querySelector("#more");
let page = null;
let client = createClient({ baseUrl: service });

function say(text) {
  status.textContent = text;
}

function explain(error) {
  if (!(error instanceof ApiError)) return `${error}`; // a network error, or CORS not allowed
  const wait = error.retryAfter === null ? "" : ` (retry after ${error.retryAfter} s)`;
  return `${error.status} ${error.error}: ${error.detail}${wait}`;
}

/** A thumbnail: `crossorigin` makes the browser ask with CORS, so a canvas may read its pixels. */
function thumbnail(image) {
  const img = new Image();
  img.crossOrigin = "anonymous";
  img.alt = image.filename;
  img.src = client.contentUrl(image.image_id, { preset: "thumb" }); // AVIF or WebP, from the img's Accept
  return img;
}

function draw(img) {
  const canvas = document.querySelector("#canvas");
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0, canvas.width, canvas.height);
  const [r, g, b, a] = context.getImageData(0, 0, 1, 1).data; // throws on a tainted canvas
  document.querySelector("#pixel").textContent = `pixel ${r},${g},${b},${a}`;
}

async function show(next) {
  page = next;
  for (const image of page.images) thumbs.append(thumbnail(image));
  more.hidden = page.next === null;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  client = createClient({ baseUrl: service, apiKey: data.get("key") || undefined });
  const progress = form.querySelector("progress");
  say(`Uploading ${data.get("file").name}…`);
  try {
    const { image, created, location } = await client.upload(data.get("file"), data.get("model_id"), {
      onProgress: (loaded, total) => (progress.value = total ? loaded / total : 0),
    });
    say(`${created ? 201 : 200} ${image.image_id}, Location: ${location}`);
    thumbs.replaceChildren();
    await show(await client.list({ model_id: image.model_id, limit: 4 }));
    const newest = thumbs.querySelector("img");
    await newest.decode();
    draw(newest);
  } catch (error) {
    say(explain(error));
  }
});

more.addEventListener("click", async () => {
  try {
    await show(await client.next(page));
  } catch (error) {
    say(explain(error));
  }
});
