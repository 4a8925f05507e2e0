// Two browser softphones in a real headless Chromium call each other with
// audio and video through a Ringmesh farm, each registered on its own
// supernode over secure WebSocket; the test reads getStats() on both sides
// and hangs up. Run by services/ringmesh/tests/browser.rs, which starts the
// farm and trusts its CA in the NSS database under $HOME (never by ignoring
// certificate errors).
//
//   SOFTPHONE_URL=https://127.0.0.1:P+800/ [SCREENSHOT=file.png] node test/call.mjs
//
// With UNTRUSTED_HOME (a $HOME whose NSS database lacks the CA), it first
// checks that a browser that does not trust the farm CA cannot even load
// the page.
//
// Prints one JSON line with what each side saw; exits 1 on any failure.

import { chromium } from 'playwright-core';

const url = process.env.SOFTPHONE_URL;
const shot = process.env.SCREENSHOT;
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!url) {
  console.error('SOFTPHONE_URL is not set');
  process.exit(2);
}

const launch = (home) => chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  env: { ...process.env, HOME: home },
  args: [
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

const result = {};
if (process.env.UNTRUSTED_HOME) {
  const stranger = await launch(process.env.UNTRUSTED_HOME);
  const page = await stranger.newPage();
  try {
    await page.goto(url);
    result.untrusted = 'loaded';
  } catch (e) {
    result.untrusted = e.message.split('\n')[0];
  }
  await stranger.close();
  if (!String(result.untrusted).includes('ERR_CERT')) {
    console.error(`a browser without the CA loaded the page: ${result.untrusted}`);
    console.log(JSON.stringify(result));
    process.exit(1);
  }
}
const browser = await launch(process.env.HOME);
const deadline = (s) => ({ timeout: s * 1000 });
const pages = {};
// What each page's phone saw, for a failure's report.
const states = async () => {
  const out = {};
  for (const [who, p] of Object.entries(pages)) {
    out[who] = await p
      .evaluate(() => ({
        state: window.phone && window.phone.state,
        error: window.phone && window.phone.error,
        log: window.phone ? window.phone.log.slice(-8) : [],
      }))
      .catch((e) => ({ unreadable: e.message }));
  }
  return out;
};
try {
  const open = async (who, node) => {
    const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
    const page = await context.newPage();
    pages[who] = page;
    page.on('pageerror', (e) => console.error(`${who}: page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') console.error(`${who}: console: ${m.text()}`);
    });
    await page.goto(`${url}?node=${node}&user=${who}&auto=1`);
    await page.waitForFunction(() => window.phone && window.phone.state === 'registered', null, deadline(60));
    return page;
  };
  const alice = await open('alice', 0);
  const bob = await open('bob', 1);
  const state = (p) => p.evaluate(() => window.phone.state);

  await alice.evaluate(() => window.phone.call('bob'));
  await bob.waitForFunction(() => window.phone.state === 'incoming', null, deadline(20));
  await bob.evaluate(() => window.phone.answer());
  for (const p of [alice, bob]) {
    await p.waitForFunction(() => window.phone.state === 'in-call', null, deadline(20));
  }
  // RTP both ways, audio and video: wait for real packet counts (polled
  // from here: getStats() is asynchronous).
  const flowing = async (p) => {
    const until = Date.now() + 20000;
    for (;;) {
      const s = await p.evaluate(() => window.phone.stats());
      if (s.audio.received > 100 && s.video.received > 100) return s;
      if (Date.now() > until) throw new Error(`RTP short: ${JSON.stringify(s)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  };
  for (const p of [alice, bob]) await flowing(p);
  // The remote video is playing frames.
  for (const p of [alice, bob]) {
    await p.waitForFunction(() => {
      const v = document.getElementById('remote');
      return v.videoWidth > 0 && v.currentTime > 0.5;
    }, null, deadline(10));
  }
  if (shot) await alice.screenshot({ path: shot });
  result.alice = { during: await alice.evaluate(() => window.phone.stats()) };
  result.bob = { during: await bob.evaluate(() => window.phone.stats()) };

  await alice.evaluate(() => window.phone.hangup());
  for (const p of [alice, bob]) {
    await p.waitForFunction(() => window.phone.state === 'ended', null, deadline(10));
  }
  result.alice.end = await state(alice);
  result.bob.end = await state(bob);
  result.bob.log = await bob.evaluate(() => window.phone.log.slice(-3));
  console.log(JSON.stringify(result));
  await browser.close();
} catch (e) {
  console.error(`browser call failed: ${e.message}`);
  console.error(JSON.stringify(await states(), null, 1));
  console.log(JSON.stringify(result));
  await browser.close();
  process.exit(1);
}
