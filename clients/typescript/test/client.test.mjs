// The client (dist/, built by tsc) against the live service. Run through pytest
// (tests/test_browser_client.py), which starts the service in each mode and passes, in the environment:
// IMAGE_SERVICE_URL, IMAGE_SERVICE_KEYS (JSON: {write, catalog, admin, read, flood}) and
// IMAGE_SERVICE_SAMPLES (a folder of distinct PNGs, 0.png, 1.png, ...); in one mode also
// IMAGE_SERVICE_PRIVATE_URL, a service on the same store with PUBLIC_READ=false.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { ApiError, createClient, nextLink, parseRetryAfter } from "../dist/index.js";

const { IMAGE_SERVICE_URL: baseUrl, IMAGE_SERVICE_KEYS, IMAGE_SERVICE_SAMPLES: samples } = process.env;
const privateUrl = process.env.IMAGE_SERVICE_PRIVATE_URL;
assert.ok(baseUrl && IMAGE_SERVICE_KEYS && samples, "run through pytest tests/test_browser_client.py");
const keys = JSON.parse(IMAGE_SERVICE_KEYS);
const writer = createClient({ baseUrl, apiKey: keys.write });
const admin = createClient({ baseUrl: `${baseUrl}/`, apiKey: keys.admin });
// Labels, covers and lookups write with a key of their own: THROTTLE_UPLOAD (30/min) counts per key.
const catalog = createClient({ baseUrl, apiKey: keys.catalog });
const anonymous = createClient({ baseUrl });

const sample = async (i) => new Blob([await readFile(join(samples, `${i}.png`))], { type: "image/png" });
const original = (i) => readFile(join(samples, `${i}.png`));
const bytesOf = async (blob) => Buffer.from(await blob.arrayBuffer());
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

test("labels: on upload, set and cleared later, and filtering", async () => {
  const model = newModel("label");
  const front = (await catalog.upload(await sample(0), model, { label: "front" })).image;
  const side = (await catalog.upload(await sample(1), model, { label: "side" })).image;
  assert.deepEqual([front.label, side.label], ["front", "side"]);
  const fronts = await anonymous.list({ model_id: model, label: "front" });
  assert.deepEqual(fronts.images.map((i) => i.image_id), [front.image_id]);
  const newestFront = await anonymous.modelImage(model, { label: "front" });
  assert.ok((await bytesOf(newestFront)).equals(await original(0)));
  const top = await catalog.setLabel(side.image_id, "top");
  assert.deepEqual([top.image_id, top.label], [side.image_id, "top"]);
  assert.deepEqual((await anonymous.modelImages(model, { label: "top" })).images, [top]);
  assert.equal((await catalog.setLabel(side.image_id, null)).label, null);
  assert.equal((await anonymous.get(side.image_id)).label, null);
  const bad = await refused(catalog.setLabel(front.image_id, "Front View"));
  assert.deepEqual([bad.status, bad.error], [400, "invalid_label"]);
  assert.equal((await refused(anonymous.setLabel(front.image_id, "top"))).status, 401);
  const badUpload = await refused(catalog.upload(await sample(2), model, { label: "no spaces" }));
  assert.deepEqual([badUpload.status, badUpload.error], [400, "invalid_label"]);
  assert.equal((await anonymous.list({ model_id: model, count: true })).total, 2); // nothing stored
});

test("covers: set, seen in metadata and by model, cleared", async () => {
  const model = newModel("cover");
  const older = (await catalog.upload(await sample(3), model)).image;
  const newer = (await catalog.upload(await sample(4), model)).image;
  const cover = await catalog.setCover(model, older.image_id);
  assert.deepEqual([cover.image_id, cover.cover], [older.image_id, true]);
  assert.equal((await anonymous.get(older.image_id)).cover, true);
  assert.ok((await bytesOf(await anonymous.modelImage(model))).equals(await original(3)));
  await catalog.clearCover(model);
  await catalog.clearCover(model); // none: still 204
  assert.equal((await anonymous.get(older.image_id)).cover, false);
  assert.ok((await bytesOf(await anonymous.modelImage(model))).equals(await original(4)));
  const other = await refused(catalog.setCover(newModel("other"), newer.image_id));
  assert.deepEqual([other.status, other.error], [400, "image_of_another_model"]);
  assert.equal((await refused(catalog.setCover(model, "0".repeat(24)))).status, 404);
  assert.equal((await refused(anonymous.clearCover(model))).status, 401);
});

test("batch lookups by GET and POST: covers, else newest, and null", async () => {
  const [covered, plain, none] = [newModel("batch"), newModel("batch"), newModel("none")];
  const chosen = (await catalog.upload(await sample(5), covered)).image;
  await catalog.upload(await sample(6), covered);
  await catalog.setCover(covered, chosen.image_id);
  const newest = (await catalog.upload(await sample(7), plain)).image;
  for (const lookup of [anonymous.models, anonymous.lookupModels]) {
    const found = await lookup([plain, none, covered]);
    assert.deepEqual(Object.keys(found), [plain, none, covered]);
    assert.deepEqual([found[plain].image_id, found[none], found[covered].image_id], [
      newest.image_id,
      null,
      chosen.image_id,
    ]);
    assert.equal(found[covered].cover, true);
    assert.equal(found[plain].thumb, `${baseUrl}/images/${newest.image_id}/content?preset=thumb`);
  }
  const signed = await anonymous.lookupModels([plain], { signed: true, ttl: 60 });
  assert.match(signed[plain].signed_urls.thumb, /[?&]sig=/);
  const tooMany = await refused(anonymous.models(Array.from({ length: 101 }, (_, i) => `m${i}`)));
  assert.equal(tooMany.status, 400);
});

test("signed URLs load without credentials, and only as signed", async () => {
  // With IMAGE_SERVICE_PRIVATE_URL, a service where reads need a credential; else the public one.
  const reader = createClient({ baseUrl: privateUrl ?? baseUrl, apiKey: keys.read });
  const { image } = await catalog.upload(await sample(8), newModel("signed"));
  if (privateUrl) {
    assert.equal((await fetch(reader.contentUrl(image.image_id))).status, 401);
    const anonymousPrivate = createClient({ baseUrl: privateUrl });
    assert.equal((await refused(anonymousPrivate.signedUrl(image.image_id))).status, 401);
  }
  const { url, expires_at } = await reader.signedUrl(image.image_id, { ttl: 60 });
  assert.ok(url.startsWith(`${reader.contentUrl(image.image_id)}?`), url);
  const expires = Date.parse(expires_at) - Date.now();
  assert.ok(expires > 50_000 && expires <= 61_000, expires_at);
  const loaded = await fetch(url); // no Authorization
  assert.equal(loaded.status, 200);
  assert.ok(Buffer.from(await loaded.arrayBuffer()).equals(await original(8)));
  const thumb = await reader.signedUrl(image.image_id, { preset: "thumb" });
  const derivative = await fetch(thumb.url, { headers: { Accept: "image/webp" } });
  assert.deepEqual([derivative.status, derivative.headers.get("Content-Type")], [200, "image/webp"]);
  const tampered = await fetch(thumb.url.replace("preset=thumb", "preset=full"));
  assert.deepEqual([tampered.status, (await tampered.json()).error], [403, "bad_signature"]);
  const { signed_urls } = await reader.get(image.image_id, { signed: true });
  assert.deepEqual(Object.keys(signed_urls).sort(), ["card", "full", "original", "thumb"]);
  assert.equal((await fetch(signed_urls.original)).status, 200);
  const badTtl = await refused(reader.signedUrl(image.image_id, { ttl: 0 }));
  assert.deepEqual([badTtl.status, badTtl.error], [400, "invalid_ttl"]);
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
