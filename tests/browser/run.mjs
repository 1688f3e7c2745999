// Drives the system Chromium (headless, with Playwright) through a scripted list of steps and
// prints exactly one JSON line with what happened. Used by the Rust end-to-end tests through
// tests/src/browser.rs; runnable by hand too:
//
//   node tests/browser/run.mjs steps.json
//
// steps.json:
//
//   {
//     "screenshots": "/abs/dir",          // where {"screenshot": NAME} writes NAME.png
//     "ignore_https_errors": false,       // optional: accept self-signed certificates
//     "viewport": {"width": 1280, "height": 800},   // optional
//     "deadline_ms": 100000,              // optional: the whole run, then it stops and reports
//     "steps": [
//       {"goto": "http://127.0.0.1:PORT/path"},
//       {"click": "css"},                  // then waits for a navigation it starts (if any)
//       {"fill": {"css": "value", "css2": "value"}},
//       {"submit": "css of a form or a button"},   // requestSubmit()/click, waits for the navigation
//       {"wait_url_prefix": "http://127.0.0.1:PORT/done", "timeout_ms": 15000},
//       {"text": "css"},                   // texts[css] = textContent of the first match
//       {"screenshot": "name"},            // full page
//       {"axe": "name"},                   // axe[name] = serious/critical violations
//       {"eval": "js expression"},         // evals.push(value), awaited when a promise
//       {"expect_no_dialog": true}         // fails when any dialog was raised so far
//     ]
//   }
//
// Every step may carry "timeout_ms" (default 15000). Steps run in order on one page of one
// browser context; the first failing step stops the run. Every step is checked before the
// browser starts: a malformed one fails at its index with nothing run. Selectors are CSS; a
// selector that matches several elements acts on the first. "click" counts a navigation whose
// request starts within 0.5 s after the click (later ones: add a "wait_url_prefix"); "submit"
// fails when none starts within its timeout. A navigation whose request fails (unreachable
// host) does not fail the step: it is listed in "navigations" with its error.
//
// Output (one line on stdout):
//
//   {"ok": bool, "failed_step": index|null, "error": string|null, "url": final URL,
//    "status": last main-frame response status|null (null after a failed navigation),
//    "texts": {css: text}, "evals": [...],
//    "axe": {name: [{"id", "impact", "help", "nodes"}]}, "dialogs": [{"type", "message", "url"}],
//    "console_errors": [text], "csp_violations": [{"directive", "blocked", "url"}],
//    "page_errors": [text], "navigations": [{"url", "status", "error"}],
//    "screenshots": {name: path}}
//
// Dialogs (alert/confirm/prompt) are always recorded and dismissed. Exit code 0 whenever the
// JSON line was printed (a failed step is reported in it); non-zero only when the driver itself
// could not run (bad arguments, unreadable steps, the browser failing to start).
//
// The browser is the Debian `chromium` package (SWITCHYARD_CHROMIUM overrides the path):
// playwright-core is used without a browser download of its own.

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const DEFAULT_TIMEOUT_MS = 15_000;
const DEFAULT_DEADLINE_MS = 100_000;
// How long after a click a navigation it caused must have started to be waited for.
const CLICK_NAV_GRACE_MS = 500;
const STEP_KINDS = ['goto', 'click', 'fill', 'submit', 'wait_url_prefix', 'text', 'screenshot', 'axe', 'eval', 'expect_no_dialog'];
// Other keys a step may carry besides its kind.
const STEP_OPTIONS = ['timeout_ms'];

function die(msg) {
  process.stderr.write(`run.mjs: ${msg}\n`);
  process.exit(2);
}

if (process.argv.length !== 3) die('usage: node run.mjs <steps.json>');
let spec;
try {
  spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
} catch (e) {
  die(`cannot read ${process.argv[2]}: ${e.message}`);
}
if (!spec || typeof spec !== 'object' || !Array.isArray(spec.steps)) die('the steps file must be an object with a "steps" array');

const result = {
  ok: true,
  failed_step: null,
  error: null,
  url: null,
  status: null,
  texts: {},
  evals: [],
  axe: {},
  dialogs: [],
  console_errors: [],
  csp_violations: [],
  page_errors: [],
  navigations: [],
  screenshots: {},
};

function fail(index, error) {
  result.ok = false;
  result.failed_step = index;
  // Playwright's messages carry ANSI colours (its call log): plain text is easier to assert on.
  // eslint-disable-next-line no-control-regex
  const msg = (error instanceof Error ? error.message : String(error)).replace(/\u001b\[[0-9;]*m/g, '');
  result.error = msg.length > 4000 ? `${msg.slice(0, 4000)}…` : msg;
}

/** The kind of step `step` is, or throws. */
function kindOf(step) {
  if (!step || typeof step !== 'object' || Array.isArray(step)) throw new Error('a step must be an object');
  const kinds = Object.keys(step).filter((k) => STEP_KINDS.includes(k));
  const unknown = Object.keys(step).filter((k) => !STEP_KINDS.includes(k) && !STEP_OPTIONS.includes(k));
  if (kinds.length !== 1 || unknown.length) {
    throw new Error(`a step needs exactly one of ${STEP_KINDS.join(', ')} (got keys ${Object.keys(step).join(', ') || 'none'})`);
  }
  const kind = kinds[0];
  const arg = step[kind];
  const wantString = ['goto', 'click', 'submit', 'wait_url_prefix', 'text', 'screenshot', 'axe', 'eval'];
  if (wantString.includes(kind) && typeof arg !== 'string') throw new Error(`"${kind}" takes a string`);
  if (kind === 'fill' && (!arg || typeof arg !== 'object' || Array.isArray(arg) || Object.values(arg).some((v) => typeof v !== 'string'))) {
    throw new Error('"fill" takes an object of selector: string value');
  }
  if ((kind === 'screenshot' || kind === 'axe') && (!arg || arg.includes('/') || arg.includes('\\') || arg.startsWith('.'))) {
    throw new Error(`"${kind}" takes a plain name (no path separators)`);
  }
  if (kind === 'screenshot' && typeof spec.screenshots !== 'string') throw new Error('a screenshot step needs a top-level "screenshots" directory');
  if ('timeout_ms' in step && !(Number.isFinite(step.timeout_ms) && step.timeout_ms > 0)) throw new Error('"timeout_ms" must be a positive number');
  return kind;
}

// Check every step before starting a browser: a typo fails fast, at its index.
for (const [i, step] of spec.steps.entries()) {
  try {
    kindOf(step);
  } catch (e) {
    fail(i, e);
    break;
  }
}
if (!result.ok) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

const require = createRequire(import.meta.url);
const axePath = require.resolve('axe-core/axe.min.js');

const browser = await chromium
  .launch({
    executablePath: process.env.SWITCHYARD_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // --no-sandbox: the tests run as root. The rest (with Playwright's own switches such as
    // --disable-background-networking) keep Chromium off the network beyond the tested pages:
    // this machine's network is closed and refused connections only slow it down.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-sync'],
    timeout: 30_000,
  })
  .catch((e) => die(`cannot start chromium: ${e.message}`));

const context = await browser.newContext({
  ignoreHTTPSErrors: Boolean(spec.ignore_https_errors),
  viewport: spec.viewport || { width: 1280, height: 800 },
  // No bypassCSP: the pages' CSP stays in force, so violations show up in the result.
});
// CSP violations, structured: a listener installed before any page script (init scripts are
// not subject to the page's CSP), reporting through a binding.
await context.exposeBinding('__switchyardCspViolation', (_source, v) => {
  result.csp_violations.push(v);
});
await context.addInitScript(() => {
  document.addEventListener('securitypolicyviolation', (e) => {
    // The binding may be gone while the page unloads: swallow that, both ways it can fail
    // (an unhandled rejection would show up as a console error of the page).
    try {
      const v = { directive: e.effectiveDirective, blocked: e.blockedURI, url: e.documentURI };
      Promise.resolve(window.__switchyardCspViolation(v)).catch(() => {});
    } catch {
      // See above.
    }
  });
});
const page = await context.newPage();
const main = page.mainFrame();

page.on('dialog', (d) => {
  result.dialogs.push({ type: d.type(), message: d.message(), url: page.url() });
  d.dismiss().catch(() => {});
});
page.on('console', (m) => {
  if (m.type() === 'error') result.console_errors.push(m.text());
});
page.on('pageerror', (e) => result.page_errors.push(e.message));
page.on('response', (r) => {
  const req = r.request();
  if (req.frame() === main && req.isNavigationRequest()) {
    result.status = r.status();
    result.navigations.push({ url: r.url(), status: r.status(), error: null });
  }
});
page.on('requestfailed', (req) => {
  if (req.frame() === main && req.isNavigationRequest()) {
    // No response: the document shown now (Chromium's error page) has no status.
    result.status = null;
    result.navigations.push({ url: req.url(), status: null, error: req.failure()?.errorText ?? 'failed' });
  }
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `action` (a click or a form submission) and waits for the main-frame navigation it
 * causes: its commit, then the new document's `load`, all within `timeout`. A navigation
 * counts when its request starts while the action runs or within CLICK_NAV_GRACE_MS after.
 * Without one, `required` makes that an error; otherwise it returns at the end of the grace
 * period (a click that changes nothing does not hang).
 */
async function actAndSettle(action, timeout, required) {
  const deadline = Date.now() + timeout;
  let started = false;
  let settle;
  const settled = new Promise((r) => {
    settle = r;
  });
  const onRequest = (req) => {
    if (req.frame() === main && req.isNavigationRequest()) started = true;
  };
  const onNavigated = (f) => {
    if (f === main) settle('navigated');
  };
  const onFailed = (req) => {
    if (req.frame() === main && req.isNavigationRequest() && !req.redirectedTo()) settle('failed');
  };
  page.on('request', onRequest);
  page.on('framenavigated', onNavigated);
  page.on('requestfailed', onFailed);
  try {
    await action();
    const grace = required ? Math.max(0, deadline - Date.now()) : CLICK_NAV_GRACE_MS;
    // Wait out the grace period unless a navigation starts (or commits) meanwhile.
    const graceEnd = Date.now() + grace;
    let outcome = null;
    while (!started && Date.now() < graceEnd) {
      outcome = await Promise.race([settled, sleep(Math.min(25, graceEnd - Date.now())).then(() => null)]);
      if (outcome) break;
    }
    if (!started && !outcome) {
      if (required) throw new Error(`no navigation within ${timeout} ms`);
      return;
    }
    if (!outcome) {
      const left = Math.max(0, deadline - Date.now());
      outcome = await Promise.race([settled, sleep(left).then(() => null)]);
      if (!outcome) throw new Error(`the navigation did not commit within ${timeout} ms`);
    }
    if (outcome === 'navigated') {
      await page.waitForLoadState('load', { timeout: Math.max(1, deadline - Date.now()) });
    }
    // 'failed': the navigation's request failed (unreachable host, aborted); Chromium shows its
    // error page. Reported in `navigations`; the following steps decide whether that matters.
  } finally {
    page.off('request', onRequest);
    page.off('framenavigated', onNavigated);
    page.off('requestfailed', onFailed);
  }
}

/** Runs one step (already validated). */
async function runStep(step) {
  const kind = kindOf(step);
  const arg = step[kind];
  const timeout = step.timeout_ms ?? DEFAULT_TIMEOUT_MS;
  switch (kind) {
    case 'goto': {
      const r = await page.goto(arg, { timeout, waitUntil: 'load' });
      if (r) result.status = r.status();
      break;
    }
    case 'click': {
      const el = page.locator(arg).first();
      await actAndSettle(() => el.click({ timeout }), timeout, false);
      break;
    }
    case 'fill':
      for (const [sel, value] of Object.entries(arg)) {
        await page.locator(sel).first().fill(value, { timeout });
      }
      break;
    case 'submit': {
      const el = page.locator(arg).first();
      const tag = await el.evaluate((e) => e.tagName, undefined, { timeout });
      const action = tag === 'FORM' ? () => el.evaluate((f) => f.requestSubmit()) : () => el.click({ timeout });
      await actAndSettle(action, timeout, true);
      break;
    }
    case 'wait_url_prefix':
      await page.waitForURL((u) => u.href.startsWith(arg), { timeout, waitUntil: 'load' });
      break;
    case 'text':
      result.texts[arg] = await page.locator(arg).first().textContent({ timeout });
      break;
    case 'screenshot': {
      mkdirSync(spec.screenshots, { recursive: true });
      const file = path.resolve(spec.screenshots, `${arg}.png`);
      await page.screenshot({ path: file, fullPage: true, timeout });
      result.screenshots[arg] = file;
      break;
    }
    case 'axe': {
      // The pages are served with `script-src 'self'` (no 'unsafe-inline'), so
      // page.addScriptTag({path}) — an inline <script> — is blocked and logs a CSP violation,
      // and bypassCSP on the context would hide the CSP the tests check. Instead the axe
      // source is evaluated through the DevTools protocol (page.evaluate with a string), which
      // the page's CSP does not govern: axe lands in the page's main world as window.axe
      // without a <script> element, a CSP violation or a console error.
      const loaded = await page.evaluate(() => typeof window.axe === 'object');
      if (!loaded) await page.evaluate(readFileSync(axePath, 'utf8'));
      const violations = await page.evaluate(async () => {
        const r = await window.axe.run(document, { resultTypes: ['violations'] });
        return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }));
      });
      result.axe[arg] = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
      break;
    }
    case 'eval': {
      const v = await page.evaluate(arg);
      result.evals.push(v === undefined ? null : v);
      break;
    }
    case 'expect_no_dialog':
      if (arg && result.dialogs.length) {
        throw new Error(`${result.dialogs.length} dialog(s) raised: ${JSON.stringify(result.dialogs)}`);
      }
      break;
    default:
      throw new Error(`unknown step ${kind}`);
  }
}

let current = null;
const steps = (async () => {
  for (const [i, step] of spec.steps.entries()) {
    current = i;
    try {
      await runStep(step);
    } catch (e) {
      fail(i, e);
      return;
    }
  }
  current = null;
})();
const deadlineMs = Number.isFinite(spec.deadline_ms) ? spec.deadline_ms : DEFAULT_DEADLINE_MS;
let timer;
const overrun = new Promise((r) => {
  timer = setTimeout(() => r('overrun'), deadlineMs);
});
if ((await Promise.race([steps, overrun])) === 'overrun') {
  fail(current, `the run exceeded its deadline of ${deadlineMs} ms`);
}
clearTimeout(timer);

try {
  result.url = page.url();
} catch {
  // The page is gone (crashed): url stays null.
}
process.stdout.write(`${JSON.stringify(result)}\n`);
// Closing may take a moment; a browser that does not close must not keep the run going.
await Promise.race([browser.close(), sleep(10_000)]);
process.exit(0);
