// The dashboard in a real browser: Debian's chromium (headless), driven by playwright-core,
// against `rulechain run --demo` on free loopback ports. A new user's walk: the page loads, the
// pumps appear, their values change, the motor-overload alarm appears and is acknowledged with
// a click (and the API says who acknowledged it), the chains and a trace show; a device id that
// carries markup stays text; against an engine with `http.token`, the page asks for the token
// and then works.
//
//   node tests/browser/dashboard.mjs target/release/rulechain [--screenshots docs/]
//
// The engine is stopped by pid at the end, whatever happened.
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const [bin, ...rest] = process.argv.slice(2);
if (!bin) {
  console.error("usage: node tests/browser/dashboard.mjs PATH/TO/rulechain [--screenshots DIR]");
  process.exit(2);
}
// With a folder: the alarms page as the alarm appears, and pump-1's page at the end (the
// README's pictures).
const shots = rest[0] === "--screenshots" ? rest[1] : null;
const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..", "..");

const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.on("error", reject);
  s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const step = (what) => console.log(`  - ${what}`);

const [mqtt, http] = [await freePort(), await freePort()];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "rulechain-browser-"));
// A copy of the example rules (a promotion on the Shadow page writes into the rules directory),
// and a candidate: no store-telemetry chain, and motors overloaded only past 150%.
fs.cpSync(path.join(repo, "rules"), path.join(dir, "rules"), { recursive: true });
fs.mkdirSync(path.join(dir, "candidate"));
for (const f of fs.readdirSync(path.join(dir, "rules"))) {
  if (f.endsWith(".test.yaml") || f === "store-telemetry.yaml") continue;
  const text = fs.readFileSync(path.join(dir, "rules", f), "utf8");
  fs.writeFileSync(path.join(dir, "candidate", f), text.replace("attr.rated_current * 1.2", "attr.rated_current * 1.5"));
}
fs.writeFileSync(path.join(dir, "rulechain.yaml"), [
  `embedded_broker: {listen: "127.0.0.1:${mqtt}"}`,
  `http: {listen: "127.0.0.1:${http}"}`,
  `rules: ${JSON.stringify(path.join(dir, "rules"))}`,
  `state_dir: ${JSON.stringify(path.join(dir, "state"))}`,
  // The example rules' channels, delivered to the log (as the embedded default does).
  "channels: {maintenance-email: {log: {}}, ops-webhook: {log: {}}}",
  "",
].join("\n"));
const log = fs.openSync(path.join(dir, "engine.log"), "w");
const engine = spawn(bin, ["run", "--demo", "--config", path.join(dir, "rulechain.yaml")], {
  stdio: ["ignore", log, log],
});
const base = `http://127.0.0.1:${http}`;
const api = async (p) => (await fetch(base + p)).json();

let browser;
let second;
let failed = false;
try {
  // Ready: subscribed, rules loaded.
  const start = Date.now();
  for (;;) {
    const r = await fetch(`${base}/readyz`).catch(() => null);
    if (r && r.status === 200) break;
    assert.ok(Date.now() - start < 20000, "the engine is not ready within 20 s");
    await sleep(200);
  }
  const printed = fs.readFileSync(path.join(dir, "engine.log"), "utf8");
  assert.match(printed, new RegExp(`dashboard on http://127\\.0\\.0\\.1:${http}/`), "run --demo prints the dashboard URL");
  step("the engine is ready and printed the dashboard URL");

  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  // A dialog is an error (an alert), except the one confirmation a step says it expects.
  let confirmNext = false;
  page.on("dialog", (d) => {
    if (confirmNext && d.type() === "confirm") { confirmNext = false; d.accept(); return; }
    errors.push(`dialog: ${d.message()}`);
    d.dismiss();
  });

  await page.goto(`${base}/`);
  for (const id of ["pump-1", "pump-2", "pump-3"]) {
    await page.waitForSelector(`[data-device="${id}"]`, { timeout: 20000 });
  }
  step("the page loads and the three pumps appear");

  const vals = () => page.locator('[data-device="pump-1"] .vals').innerText();
  const first = await vals();
  await page.waitForFunction((before) => {
    const e = document.querySelector('[data-device="pump-1"] .vals');
    return e && e.innerText !== before;
  }, first, { timeout: 20000 });
  step(`live values change (${first.trim()} → ${(await vals()).trim()})`);

  await page.waitForSelector("#link.up", { timeout: 10000 });
  step("the WebSocket is connected");

  // A device id with markup, published by a device of its own: it must stay text.
  const evil = "<img src=x onerror=window.__xss=1>";
  execFileSync("mosquitto_pub", ["-h", "127.0.0.1", "-p", String(mqtt), "-t", `site/a/device/${evil}/telemetry`, "-m", '{"current": 1.5}']);
  await page.waitForFunction((id) => [...document.querySelectorAll(".card .id")].some((e) => e.textContent.includes(id)), evil, { timeout: 10000 });
  assert.equal(await page.evaluate(() => window.__xss), undefined, "markup in a device id ran");
  assert.equal(await page.locator(".card img").count(), 0, "markup in a device id became an element");
  step("a device id carrying markup is shown as text");

  // The motor-overload alarm (the demo overloads pump-1 after 10 s; the chain holds 30 s).
  await page.fill("#who", "browser-test");
  await page.click('nav a[data-page="alarms"]');
  const row = page.locator('tr[data-alarm^="MotorOverload:pump-1:"]').first();
  await row.waitFor({ timeout: 90000 });
  const id = await row.getAttribute("data-alarm");
  assert.match(await row.locator(".sev").innerText(), /WARNING|MAJOR|CRITICAL/);
  step(`the motor-overload alarm appears (${await row.getAttribute("data-status")})`);
  if (shots) await page.screenshot({ path: path.join(shots, "dashboard-alarms.png") });

  // The load shed clears the alarm; cleared and not yet acknowledged, it is still open, and
  // the device still shows a severity for it.
  for (let i = 0; i < 100; i++) {
    const a = (await api(`/api/alarms?device=pump-1`)).alarms.find((x) => x.id === id);
    if (a && a.status === "CLEARED_UNACK") break;
    await sleep(200);
  }
  const pump1 = (await api("/api/devices")).devices.find((d) => d.id === "pump-1");
  assert.ok(pump1.open_alarms > 0 && pump1.severity, `pump-1: ${JSON.stringify(pump1)}`);
  step(`cleared, not yet acknowledged: pump-1 shows ${pump1.open_alarms} open alarm (${pump1.severity})`);

  // A page of another site open in the same browser (a real server on another loopback port)
  // tries what a hostile page would: `no-cors` POSTs, which need no preflight. Nothing changes.
  const evilPort = await freePort();
  const evilServer = (await import("node:http")).createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<p>a page of another site</p>");
  });
  await new Promise((r) => evilServer.listen(evilPort, "127.0.0.1", r));
  const otherSite = await browser.newPage();
  await otherSite.goto(`http://127.0.0.1:${evilPort}/`);
  const tried = await otherSite.evaluate(async (url) => {
    let sent = 0;
    for (const body of ['{"by": "evil-page"}', ""]) {
      try {
        await fetch(url, { method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body });
        sent++;
      } catch (e) { /* a refused request is what we want; a network error is not */ }
    }
    return sent;
  }, `${base}/api/alarms/${encodeURIComponent(id)}/ack`);
  await otherSite.close();
  evilServer.close();
  assert.equal(tried, 2, "the other site's requests did not reach the engine");
  const untouched = (await api(`/api/alarms?device=pump-1`)).alarms.find((a) => a.id === id);
  assert.ok(untouched && untouched.status.endsWith("UNACK") && !untouched.acked_by,
    `a page of another site acknowledged the alarm: ${JSON.stringify(untouched)}`);
  step("a page of another site cannot acknowledge it (no-cors POSTs refused)");

  await row.locator("button.ack").click();
  // Acknowledged: ACTIVE_ACK stays listed, CLEARED_ACK leaves the open alarms.
  await page.waitForFunction((alarm) => {
    const r = document.querySelector(`tr[data-alarm="${CSS.escape(alarm)}"]`);
    return !r || r.dataset.status.endsWith("_ACK") && !r.dataset.status.endsWith("UNACK");
  }, id, { timeout: 10000 });
  const open = await api(`/api/alarms?device=pump-1`);
  const closed = await api(`/api/alarms?device=pump-1&status=CLEARED_ACK`);
  const seen = [...open.alarms, ...closed.alarms].find((a) => a.id === id);
  assert.ok(seen, `alarm ${id} not in the API`);
  assert.match(seen.status, /^(ACTIVE_ACK|CLEARED_ACK)$/);
  assert.equal(seen.acked_by, "browser-test");
  step(`acknowledged with a click; the API says ${seen.status} by ${seen.acked_by}`);

  // The alarm's page: its history (who did what), and a comment added from the page.
  await page.goto(`${base}/#/alarm/${encodeURIComponent(id)}`);
  await page.waitForSelector('#history tr[data-kind="acknowledged"]', { timeout: 10000 });
  const ackRow = await page.locator('#history tr[data-kind="acknowledged"]').first().innerText();
  assert.match(ackRow, /browser-test/, `the history names who acknowledged: ${ackRow}`);
  assert.ok(await page.locator('#history tr[data-kind="created"]').count() === 1, "the creation is in the history");
  await page.fill('#comment-form input[name="text"]', "checked the <b>bearing</b>");
  // The page polls every 3 s: a comment being typed keeps its text and its focus.
  await sleep(3500);
  assert.equal(await page.inputValue('#comment-form input[name="text"]'), "checked the <b>bearing</b>", "the comment survived a poll");
  assert.ok(await page.evaluate(() => document.activeElement && document.activeElement.name === "text"), "the comment field kept the focus");
  await page.click('#comment-form button[type="submit"]');
  await page.waitForSelector('#history tr[data-kind="comment"]', { timeout: 10000 });
  const commentRow = await page.locator('#history tr[data-kind="comment"]').first().innerText();
  assert.match(commentRow, /browser-test/);
  assert.match(commentRow, /checked the <b>bearing<\/b>/, "a comment with markup stays text");
  const hist = await api(`/api/alarms/${encodeURIComponent(id)}/history`);
  assert.ok(hist.history.some((e) => e.kind === "comment" && e.by === "browser-test"), JSON.stringify(hist));
  step("the alarm's page shows its history (created, acknowledged by browser-test) and takes a comment");

  // A silence made on the Silences page: listed as active, ends on time by itself.
  await page.click('nav a[data-page="silences"]');
  // Filled at once, while the page's first list arrives: a redraw once re-attached the form and
  // took the focus from the field being filled (its keystrokes went nowhere).
  const silenceForm = { device: "pump-2", type: "MotorOverload", duration: "4s", comment: "browser maintenance" };
  for (const [k, v] of Object.entries(silenceForm)) await page.fill(`#silence-form input[name="${k}"]`, v);
  for (const [k, v] of Object.entries(silenceForm)) {
    assert.equal(await page.inputValue(`#silence-form input[name="${k}"]`), v, `the silence form's ${k}`);
  }
  await page.click('#silence-form button[type="submit"]');
  await page.waitForSelector('#silences tr[data-state="active"]', { timeout: 10000 });
  const made = (await api("/api/silences")).silences.find((x) => x.comment === "browser maintenance");
  assert.ok(made && made.by === "browser-test" && made.matchers.device === "pump-2", JSON.stringify(made));
  await page.waitForSelector(`#silences tr[data-silence="${made.id}"][data-state="expired"]`, { timeout: 15000 });
  step(`a silence made on the dashboard (${made.id}) is listed active, then expires on time`);
  // And one ended by hand with its Expire button.
  await page.fill('#silence-form input[name="device"]', "pump-3");
  await page.fill('#silence-form input[name="type"]', "");
  await page.fill('#silence-form input[name="duration"]', "2h");
  await page.fill('#silence-form input[name="comment"]', "by hand");
  await page.click('#silence-form button[type="submit"]');
  await page.waitForSelector('#silences tr[data-state="active"] button.expire', { timeout: 10000 });
  await page.locator('#silences tr[data-state="active"] button.expire').first().click();
  const byHand = (await api("/api/silences")).silences.find((x) => x.comment === "by hand");
  await page.waitForSelector(`#silences tr[data-silence="${byHand.id}"][data-state="expired"]`, { timeout: 10000 });
  step("an active silence ends with its Expire button");

  await page.click('nav a[data-page="chains"]');
  await page.waitForSelector('[data-chain="motor-overload"] [data-node="overload"]', { timeout: 10000 });
  const passed = await page.locator('[data-chain="store-telemetry"] [data-node="save"] td.num').first().innerText();
  assert.ok(Number(passed) > 0, `store-telemetry/save passed ${passed}`);
  step(`the chains show their node counters (store-telemetry/save passed ${passed})`);
  // Each count stands under its own header: the header's text and the number's text end at the
  // same x (both right-aligned in their column).
  const misplaced = await page.evaluate(() => {
    const textRight = (cell) => {
      const r = document.createRange();
      r.selectNodeContents(cell);
      return r.getBoundingClientRect().right;
    };
    const out = [];
    for (const table of document.querySelectorAll("[data-chain] table")) {
      const heads = [...table.querySelectorAll("tr:first-child th")];
      for (const row of [...table.querySelectorAll("tr[data-node]")]) {
        [...row.children].forEach((td, i) => {
          if (td.classList.contains("num") && Math.abs(textRight(td) - textRight(heads[i])) > 2) {
            out.push(`${row.dataset.node}: ${heads[i].textContent} ends at ${textRight(heads[i])}, its count at ${textRight(td)}`);
          }
        });
      }
    }
    return out;
  });
  assert.deepEqual(misplaced, [], "counts not under their headers");
  step("each node counter stands under its own header");

  // The Shadow page: a candidate started from its form shows what it changes, stops, starts
  // again and is promoted (written into the rules directory, who promoted it shown).
  await page.fill("#who", "browser-ana");
  await page.dispatchEvent("#who", "change");
  await page.click('nav a[data-page="shadow"]');
  await page.fill('#shadow-form input[name="dir"]', path.join(dir, "candidate"));
  await page.click('#shadow-form button[type="submit"]');
  await page.waitForSelector('#shadow-effects tr td:text("influx")', { timeout: 15000 });
  const head = await page.locator("#shadow-head").innerText();
  assert.match(head, /started by browser-ana/, head);
  const influx = await page.locator('#shadow-effects tr:has(td:text("influx")) td.num').allInnerTexts();
  assert.ok(Number(influx[0]) > 0 && Number(influx[1]) === 0, `influx points live/candidate: ${influx}`);
  step(`a shadow started on the Shadow page shows what the candidate changes (InfluxDB points live ${influx[0]}, candidate ${influx[1]})`);
  await page.click("#stop-shadow");
  await page.waitForSelector("#shadow-form", { timeout: 10000 });
  await page.fill('#shadow-form input[name="dir"]', path.join(dir, "candidate"));
  await page.click('#shadow-form button[type="submit"]');
  await page.waitForSelector("#promote", { timeout: 10000 });
  confirmNext = true;
  await page.click("#promote");
  await page.waitForSelector("#last-promotion", { timeout: 15000 });
  assert.match(await page.locator("#last-promotion").innerText(), /by browser-ana/);
  assert.ok(!fs.existsSync(path.join(dir, "rules", "store-telemetry.yaml")), "the promoted rules have no store-telemetry chain");
  assert.match(fs.readFileSync(path.join(dir, "rules", "motor-overload.yaml"), "utf8"), /rated_current \* 1\.5/);
  const promoted = (await api("/api/chains")).chains.map((c) => c.name);
  assert.ok(!promoted.includes("store-telemetry"), `chains in force: ${promoted}`);
  step("stopped, started again and promoted from the page: the candidate's rules are in force");

  await page.click('nav a[data-page="trace"]');
  await page.fill('input[name="device"]', "pump-2");
  await page.fill('input[name="limit"]', "2");
  await page.click('form.inline button[type="submit"]');
  await page.waitForSelector("#trace details", { timeout: 15000 });
  assert.match(await page.locator("#trace summary").first().innerText(), /pump-2/);
  await sleep(1500);
  const traced = await page.evaluate(() => [...document.querySelectorAll("#trace details")].map((d) => ({
    seq: d.dataset.seq,
    kinds: [...d.querySelectorAll("td.kind")].map((k) => k.textContent),
  })));
  const seqs = traced.map((t) => t.seq);
  assert.equal(new Set(seqs).size, seqs.length, `a trace entry is shown twice: ${seqs}`);
  const noKind = traced.filter((t) => t.kinds.some((k) => k === ""));
  assert.deepEqual(noKind, [], "a traced node has no kind shown");
  step(`a trace of pump-2 shows its path through the nodes (${seqs.length} entries, each once, with kinds)`);

  await page.goto(`${base}/#/device/pump-1`);
  await page.waitForSelector('.chart[data-field="current"]', { timeout: 15000 });
  step("the device page draws its charts");
  if (shots) {
    await sleep(1500);
    await page.screenshot({ path: path.join(shots, "dashboard-device.png"), fullPage: false });
  }

  assert.deepEqual(errors, [], "the page logged errors");

  // An engine that wants a token: the page asks for it, then works (API and WebSocket).
  const [mqtt2, http2] = [await freePort(), await freePort()];
  fs.writeFileSync(path.join(dir, "token.yaml"), [
    `embedded_broker: {listen: "127.0.0.1:${mqtt2}"}`,
    `http: {listen: "127.0.0.1:${http2}", token: "t0k-en"}`,
    `rules: ${JSON.stringify(path.join(repo, "rules"))}`,
    `state_dir: ${JSON.stringify(path.join(dir, "state2"))}`,
    "channels: {maintenance-email: {log: {}}, ops-webhook: {log: {}}}",
    "",
  ].join("\n"));
  const log2 = fs.openSync(path.join(dir, "engine2.log"), "w");
  second = spawn(bin, ["run", "--config", path.join(dir, "token.yaml")], { stdio: ["ignore", log2, log2] });
  const base2 = `http://127.0.0.1:${http2}`;
  for (const t0 = Date.now(); ;) {
    const r = await fetch(`${base2}/readyz`).catch(() => null);
    if (r && r.status === 200) break;
    assert.ok(Date.now() - t0 < 20000, "the engine with a token is not ready within 20 s");
    await sleep(200);
  }
  execFileSync("mosquitto_pub", ["-h", "127.0.0.1", "-p", String(mqtt2), "-t", "site/a/device/fan-9/telemetry", "-m", '{"rpm": 900}']);
  const page2 = await browser.newPage();
  page2.on("pageerror", (e) => errors.push(String(e)));
  await page2.goto(`${base2}/`);
  await page2.waitForSelector("#token-dialog[open]", { timeout: 10000 });
  await page2.fill("#token-input", "t0k-en");
  await page2.click('#token-form button[type="submit"]');
  await page2.waitForSelector('[data-device="fan-9"]', { timeout: 15000 });
  await page2.waitForSelector("#link.up", { timeout: 10000 });
  assert.deepEqual(errors, [], "the page logged errors");
  step("with http.token, the page asks for the token, then shows the devices and goes live");
  console.log("dashboard: all steps passed");
} catch (e) {
  failed = true;
  console.error(`dashboard test failed: ${e.stack || e}`);
  console.error(fs.readFileSync(path.join(dir, "engine.log"), "utf8").split("\n").slice(-30).join("\n"));
} finally {
  if (browser) await browser.close().catch(() => {});
  if (second) second.kill("SIGTERM");
  engine.kill("SIGTERM");
  await new Promise((r) => { engine.once("exit", r); setTimeout(() => { engine.kill("SIGKILL"); r(); }, 15000); });
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
