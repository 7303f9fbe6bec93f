// Real-browser test of the tester page served by `homeport serve`.
//
//   node tests/browser/tester.test.mjs http://127.0.0.x:PORT
//
// run.sh starts a `homeport lab --serve` and a `homeport serve` with the
// tester enabled that resolves the lab's domains, then runs this. Debian's
// chromium (/usr/bin/chromium) is driven by playwright-core; no browser is
// downloaded. Screenshots go to target/browser/ (a CI artifact).
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const base = (process.argv[2] || '').replace(/\/+$/, '');
if (!/^https?:\/\//.test(base)) {
  console.error('usage: node tester.test.mjs <base-url>');
  process.exit(2);
}
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const outDir = join(root, 'target', 'browser');
mkdirSync(outDir, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
// A check of one lab domain takes well under a second here; leave room for a
// loaded machine without letting a hang run into run.sh's overall bound.
const WAIT = 45_000;

let passed = 0;
let failed = 0;
const t0 = Date.now();
const secs = () => ((Date.now() - t0) / 1000).toFixed(1) + 's';

// One named check: a failure is reported with its message and counted; the
// run goes on so that one report shows every mismatch.
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n     ${String(e && e.message ? e.message : e).split('\n').join('\n     ')}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const userDataDir = mkdtempSync(join(tmpdir(), 'homeport-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 900 },
    timeout: 30_000,
  });
} catch (e) {
  console.error(`FAIL could not launch ${executablePath}: ${e.message}`);
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(1);
}
console.log(`browser: ${executablePath} ${context.browser()?.version() ?? ''} (${secs()})`.trim());

const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(WAIT);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(`page error: ${e.message}`));
page.on('console', (m) => {
  // A failed load is reported by the response handler below, with its URL.
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource'))
    pageErrors.push(`console error: ${m.text()}`);
});
page.on('response', (r) => {
  // The browser asks for /favicon.ico on its own; the page links none.
  if (r.status() >= 400 && new URL(r.url()).pathname !== '/favicon.ico')
    pageErrors.push(`HTTP ${r.status()} for ${r.url()}`);
});

const verdict = page.locator('#verdict');
const status = page.locator('#status');

// Waits until the page has rendered the report for `name` (status says it was
// checked and the result section is shown), or reports what it shows instead.
async function waitForReport(name) {
  try {
    await page.waitForFunction(
      (n) =>
        document.getElementById('status').textContent === 'Checked ' + n + '.' &&
        !document.getElementById('result').hidden,
      name,
      { timeout: WAIT },
    );
  } catch {
    throw new Error(
      `no report for ${name} within ${WAIT / 1000}s; #status says ${JSON.stringify(await status.textContent())}`,
    );
  }
}

try {
  // --- A name from the URL (a shared link): picky.lab is broken (its proxy
  //     rejects the Host header with a port).
  let tPicky = Date.now();
  await check('page loads with its title', async () => {
    const resp = await page.goto(`${base}/?server_name=picky.lab`);
    assert(resp && resp.status() === 200, `GET / returned ${resp && resp.status()}`);
    const title = await page.title();
    assert(title === 'homeport federation tester', `title is ${JSON.stringify(title)}`);
  });

  await check('accessibility: the input is labelled "Server name"', async () => {
    const byLabel = page.getByLabel('Server name', { exact: true });
    const n = await byLabel.count();
    assert(n === 1, `getByLabel('Server name') matched ${n} elements, want 1`);
    const id = await byLabel.getAttribute('id');
    assert(id === 'name', `getByLabel('Server name') is #${id}, want #name`);
  });

  await check('accessibility: the status region has role=status', async () => {
    const n = await page.getByRole('status').count();
    assert(n === 1, `getByRole('status') matched ${n} elements, want 1`);
    const id = await page.getByRole('status').getAttribute('id');
    assert(id === 'status', `the role=status element is #${id}, want #status`);
  });

  await check('the name from the URL is filled in', async () => {
    const v = await page.locator('#name').inputValue();
    assert(v === 'picky.lab', `#name holds ${JSON.stringify(v)}, want "picky.lab"`);
  });

  let pickyShown = false;
  await check('picky.lab: a report is rendered', async () => {
    await waitForReport('picky.lab');
    pickyShown = true;
    console.log(`     (report rendered ${((Date.now() - tPicky) / 1000).toFixed(1)}s after navigation)`);
  });

  await check('picky.lab: the verdict comes first and starts with "BROKEN"', async () => {
    assert(pickyShown, 'no report rendered');
    const t = (await verdict.textContent()) || '';
    assert(t.startsWith('BROKEN'), `verdict is ${JSON.stringify(t)}`);
    // "verdict first": nothing of the report is above it.
    const first = await page.evaluate(() => document.getElementById('result').firstElementChild.id);
    assert(first === 'verdict', `first element of the result is #${first}`);
  });

  await check('picky.lab: the pipeline shows step 3.2', async () => {
    assert(pickyShown, 'no report rendered');
    const t = (await page.locator('#step').textContent()) || '';
    assert(/\bstep 3\.2\b/i.test(t), `#step is ${JSON.stringify(t)}`);
    const items = await page.locator('#trace li').count();
    assert(items >= 1, `the discovery trace #trace has ${items} entries`);
  });

  await check('picky.lab: the addresses table has at least one row', async () => {
    assert(pickyShown, 'no report rendered');
    const rows = await page.locator('#addresses tbody tr').count();
    assert(rows >= 1, `#addresses tbody has ${rows} rows`);
    const cells = await page.locator('#addresses tbody tr').first().locator('td').count();
    assert(cells === 6, `the first row has ${cells} cells, want 6 (one per column)`);
  });

  await check('picky.lab: findings include host_port_rejected_by_proxy with a haproxy fix', async () => {
    assert(pickyShown, 'no report rendered');
    const f = page.locator('#findings .finding').filter({ hasText: 'host_port_rejected_by_proxy' });
    const n = await f.count();
    if (n !== 1) {
      const ids = await page.locator('#findings .finding strong').allTextContents();
      throw new Error(`${n} findings named host_port_rejected_by_proxy; findings shown: ${JSON.stringify(ids)}`);
    }
    const fix = (await f.locator('p', { hasText: /^Fix: / }).textContent()) || '';
    assert(/haproxy/i.test(fix), `its fix does not mention haproxy: ${JSON.stringify(fix)}`);
  });

  await check('picky.lab: the raw JSON is the report', async () => {
    assert(pickyShown, 'no report rendered');
    const raw = (await page.locator('#raw').textContent()) || '';
    const r = JSON.parse(raw);
    assert(r.server_name === 'picky.lab' && r.ok === false, `raw report: server_name=${r.server_name} ok=${r.ok}`);
  });

  await page.screenshot({ path: join(outDir, 'tester-broken.png'), fullPage: true });

  // --- The form, by keyboard: type a name, press Enter.
  let tForm = 0;
  await check('keyboard: Tab moves from the input to the Check button', async () => {
    await page.getByLabel('Server name', { exact: true }).focus();
    await page.keyboard.press('Tab');
    const id = await page.evaluate(() => document.activeElement && document.activeElement.id);
    assert(id === 'go', `focus went to #${id}, want #go`);
  });

  let okShown = false;
  await check('form: wk-srv.lab entered and submitted with Enter renders a report', async () => {
    const input = page.getByLabel('Server name', { exact: true });
    await input.fill('wk-srv.lab');
    tForm = Date.now();
    await input.press('Enter');
    await waitForReport('wk-srv.lab');
    okShown = true;
    console.log(`     (report rendered ${((Date.now() - tForm) / 1000).toFixed(1)}s after Enter)`);
  });

  await check('wk-srv.lab: the verdict starts with "OK"', async () => {
    assert(okShown, 'no report rendered');
    const t = (await verdict.textContent()) || '';
    assert(t.startsWith('OK'), `verdict is ${JSON.stringify(t)}`);
  });

  await check('wk-srv.lab: the URL became ?server_name=wk-srv.lab (shareable link)', async () => {
    const u = new URL(page.url());
    assert(u.search === '?server_name=wk-srv.lab', `URL is ${page.url()}`);
  });

  await page.screenshot({ path: join(outDir, 'tester.png'), fullPage: true });

  // --- Readable on a phone: at 375 px the page itself does not scroll
  //     sideways (the address table scrolls inside its own box).
  await check('phone width (375px): no horizontal page scroll', async () => {
    await page.setViewportSize({ width: 375, height: 812 });
    const { sw, cw } = await page.evaluate(() => ({
      sw: document.documentElement.scrollWidth,
      cw: document.documentElement.clientWidth,
    }));
    await page.screenshot({ path: join(outDir, 'tester-phone.png'), fullPage: true });
    assert(sw <= cw + 1, `page is ${sw}px wide in a ${cw}px viewport`);
  });

  await check('no script errors or failed requests on the page', async () => {
    assert(pageErrors.length === 0, pageErrors.join('\n'));
  });
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}

console.log(`screenshots: ${join(outDir, 'tester.png')} (also tester-broken.png, tester-phone.png)`);
console.log(`${passed} passed, ${failed} failed (${secs()})`);
process.exit(failed === 0 ? 0 : 1);
