// Takes the README's hover screenshot: opens server.js's page in headless Chromium, rests the
// mouse on `sim` in objectives/lib/contrastive.ssl, waits for Monaco's hover to show the shape
// that `sslc lsp` answered, checks it, and saves a PNG.
//
//   SSLC=target/debug/sslc node shoot.js [OUT.png]
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');
const { start } = require('./server.js');

const root = path.resolve(__dirname, '..', '..');
const file = path.join(root, 'objectives/lib/contrastive.ssl');
const anchor = 'let sim'; // hover the name this declares...
const expected = 'sim: [2*N, 2*N]'; // ...whose shape the server must answer
const out = path.resolve(process.argv[2] || path.join(root, 'docs/images/lsp-hover.png'));

async function main() {
  const server = await start({ file });
  // A profile of its own, so nothing a previous run left behind (or a running Chromium) counts.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sslc-shot-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Without the background-networking flags, Chromium's own connections (component updates,
    // sync, QUIC probes) are refused in a sandbox with no internet, many at a time.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 900, height: 450 }, // the editor is 900x420 under its tab
    deviceScaleFactor: 1, // 2 is crisper on HiDPI screens, but ~170 KB of PNG
  });
  try {
    const page = browser.pages()[0] || (await browser.newPage());
    // The page's own errors (a Monaco that failed to load, say) belong in this log.
    page.on('pageerror', (e) => console.error(`page: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && console.error(`page console: ${m.text()}`));
    await page.goto(server.url);
    await page.waitForFunction(() => window.editorReady, null, { timeout: 30000 });

    // Monaco measures characters once its font is in; positions taken before would be off.
    await page.evaluate(() => document.fonts.ready);

    // Where the middle of the name is on screen, from Monaco's own layout.
    const offset = server.text.indexOf(anchor) + anchor.indexOf(' ') + 2;
    const before = server.text.slice(0, offset);
    const lineNumber = before.split('\n').length;
    const column = offset - before.lastIndexOf('\n');
    const point = await page.evaluate(({ lineNumber, column }) => {
      const p = window.editor.getScrolledVisiblePosition({ lineNumber, column });
      const box = window.editor.getDomNode().getBoundingClientRect();
      return { x: box.left + p.left, y: box.top + p.top + p.height / 2 };
    }, { lineNumber, column });

    // The hover's text is the server's markdown, rendered by Monaco. A hover can be lost to
    // the editor still settling (a relayout hides it), so the mouse comes back a few times.
    const hover = page.locator('.monaco-hover:not(.hidden)').filter({ hasText: expected }).first();
    for (let attempt = 1; ; attempt++) {
      await page.mouse.move(point.x - 60, point.y + 60);
      await page.mouse.move(point.x, point.y, { steps: 5 });
      try {
        await hover.waitFor({ state: 'visible', timeout: 5000 });
        break;
      } catch (e) {
        const seen = await page.locator('.monaco-hover:not(.hidden)').allInnerTexts();
        console.error(`shoot.js: attempt ${attempt}: no hover with ${expected} (visible: ${JSON.stringify(seen)})`);
        if (attempt === 5) throw e;
      }
    }
    const shown = await hover.innerText();
    if (!shown.includes(expected)) throw new Error(`hover shows ${JSON.stringify(shown)}, not ${expected}`);
    await page.waitForTimeout(300); // the hover fades in

    fs.mkdirSync(path.dirname(out), { recursive: true });
    await page.screenshot({ path: out });
    console.log(`shoot.js: hover shows ${JSON.stringify(shown.trim())}; wrote ${out} (${fs.statSync(out).size} bytes)`);
  } finally {
    await browser.close();
    await server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
