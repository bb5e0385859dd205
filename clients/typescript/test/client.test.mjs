// The client (dist/, built by tsc) against the live service. Run through pytest
// (tests/test_browser_client.py), which starts the service in each mode and passes, in the environment:
// IMAGE_SERVICE_URL, IMAGE_SERVICE_KEYS (JSON: {write, admin, read, flood}) and IMAGE_SERVICE_SAMPLES
// (a folder of distinct PNGs, 0.png, 1.png, ...).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { ApiError, createClient, nextLink, parseRetryAfter } from "../dist/index.js";

const { IMAGE_SERVICE_URL: baseUrl, IMAGE_SERVICE_KEYS, IMAGE_SERVICE_SAMPLES: samples } = process.env;
assert.ok(baseUrl && IMAGE_SERVICE_KEYS && samples, "run through pytest tests/test_browser_client.py");
const keys = JSON.parse(IMAGE_SERVICE_KEYS);
const writer = createClient({ baseUrl, apiKey: keys.write });
const admin = createClient({ baseUrl: `${baseUrl}/`, apiKey: keys.admin });
const anonymous = createClient({ baseUrl });

const sample = async (i) => new Blob([await readFile(join(samples, `${i}.png`))], { type: "image/png" });
const newModel = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;

async function refused(promise) {
  const error = await promise.then(
    () => assert.fail("expected an ApiError"),
    (e) => e,
  );
  assert.ok(error instanceof ApiError, String(error));
  return error;
}

test("upload answers 201 with Location, then 200 for the same bytes", async () => {
  const model = newModel("up");
  const first = await writer.upload(await sample(0), model, { filename: "zero.png" });
  assert.equal(first.created, true);
  assert.equal(first.image.model_id, model);
  assert.equal(first.image.filename, "zero.png");
  assert.equal(first.image.content_type, "image/png");
  assert.equal(first.location, `${baseUrl}/images/${first.image.image_id}`);
  const again = await writer.upload(await sample(0), model);
  assert.deepEqual([again.created, again.image.image_id], [false, first.image.image_id]);
});

test("get by id and by model, and the bytes", async () => {
  const model = newModel("get");
  const { image } = await writer.upload(await sample(1), model, { filename: "one.png" });
  assert.deepEqual(await anonymous.get(image.image_id), image);
  const original = await readFile(join(samples, "1.png"));
  const bytes = Buffer.from(await (await anonymous.content(image.image_id)).arrayBuffer());
  assert.ok(bytes.equals(original));
  const newest = Buffer.from(await (await anonymous.modelImage(model)).arrayBuffer());
  assert.ok(newest.equals(original));
  assert.deepEqual((await anonymous.modelImages(model)).images, [image]);
});

test("list pages follow the Link header, with the total", async () => {
  const model = newModel("page");
  const ids = [];
  for (const i of [2, 3, 4]) ids.unshift((await writer.upload(await sample(i), model)).image.image_id);
  const first = await anonymous.list({ model_id: model, limit: 2, count: true });
  assert.deepEqual(first.images.map((i) => i.image_id), ids.slice(0, 2));
  assert.equal(first.total, 3);
  assert.match(first.next, /cursor=/);
  const second = await anonymous.next(first);
  assert.deepEqual(second.images.map((i) => i.image_id), ids.slice(2));
  assert.equal(second.next, null);
  assert.equal(await anonymous.next(second), null);
  const all = [];
  for await (const image of anonymous.all({ model_id: model, limit: 1 })) all.push(image.image_id);
  assert.deepEqual(all, ids);
});

test("preset URLs give derivatives, and Accept picks the format", async () => {
  const model = newModel("preset");
  const { image } = await writer.upload(await sample(5), model);
  const url = anonymous.contentUrl(image.image_id, { preset: "thumb" });
  assert.equal(url, `${baseUrl}/images/${image.image_id}/content?preset=thumb`);
  assert.equal(
    anonymous.modelImageUrl(model, { w: 64, format: "webp" }),
    `${baseUrl}/image/${model}?w=64&format=webp`,
  );
  assert.equal((await fetch(url)).headers.get("Content-Type"), "image/png"); // fetch's Accept: */*
  assert.equal((await anonymous.content(image.image_id, { preset: "thumb" })).type, "image/avif");
  assert.equal((await anonymous.modelImage(model, { w: 64, format: "webp" })).type, "image/webp");
  const bad = await refused(anonymous.content(image.image_id, { w: 65 }));
  assert.deepEqual([bad.status, bad.error], [400, "invalid_size"]);
});

test("delete needs admin, then the image is gone", async () => {
  const { image } = await writer.upload(await sample(6), newModel("del"));
  const forbidden = await refused(writer.delete(image.image_id));
  assert.deepEqual([forbidden.status, forbidden.error], [403, "permission_denied"]);
  await admin.delete(image.image_id);
  const gone = await refused(anonymous.get(image.image_id));
  assert.deepEqual([gone.status, gone.error], [404, "not_found"]);
});

test("refusals are ApiErrors with the code, the detail and the headers", async () => {
  const unauthenticated = await refused(anonymous.upload(await sample(7), "m"));
  assert.deepEqual([unauthenticated.status, unauthenticated.error], [401, "not_authenticated"]);
  assert.match(unauthenticated.headers.get("WWW-Authenticate"), /Api-Key/);
  assert.ok(unauthenticated.detail);
  const reader = createClient({ baseUrl, apiKey: keys.read });
  assert.equal((await refused(reader.upload(await sample(7), "m"))).status, 403);
  const badModel = await refused(writer.upload(await sample(7), "no spaces"));
  assert.deepEqual([badModel.status, badModel.error], [400, "invalid_model_id"]);
  const notAnImage = await refused(writer.upload(new Blob(["plain text"]), "m", { filename: "a.txt" }));
  assert.equal(notAnImage.status, 415);
  assert.equal((await refused(anonymous.modelImages(newModel("none")))).status, 404);
  const badLimit = await refused(anonymous.list({ limit: 0 }));
  assert.equal(badLimit.status, 400);
  assert.equal(badLimit.retryAfter, null);
});

test("429 carries Retry-After, in seconds", async () => {
  const flood = createClient({ baseUrl, apiKey: keys.flood });
  let limited;
  for (let i = 0; i < 100 && !limited; i++) {
    // Deletes count against THROTTLE_UPLOAD; these find nothing, so they store and delete nothing.
    const error = await refused(flood.delete("0".repeat(24)));
    if (error.status === 429) limited = error;
    else assert.equal(error.status, 404);
  }
  assert.ok(limited, "no 429 within 100 requests");
  assert.equal(limited.error, "throttled");
  assert.ok(limited.retryAfter > 0 && limited.retryAfter <= 60, String(limited.retryAfter));
});

test("upload progress needs XMLHttpRequest, which Node lacks", async () => {
  await assert.rejects(writer.upload(await sample(8), "m", { onProgress: () => {} }), TypeError);
});

test("Retry-After and Link parsing", () => {
  assert.equal(parseRetryAfter("7"), 7);
  const at = new Date(Date.UTC(2030, 0, 1, 0, 0, 30)).toUTCString();
  assert.equal(parseRetryAfter(at, Date.UTC(2030, 0, 1)), 30);
  assert.equal(parseRetryAfter("soon"), null);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(nextLink('<https://a.example/i?cursor=x>; rel="next"'), "https://a.example/i?cursor=x");
  const both = '<https://a.example/1>; rel="prev", <https://a.example/3>; rel=next';
  assert.equal(nextLink(both), "https://a.example/3");
  assert.equal(nextLink('<https://a.example/1>; rel="prev"'), null);
  assert.equal(nextLink(null), null);
});
