// Opens a page in headless Debian chromium, calls functions of window.envdTest
// on it, and prints one JSON report on stdout: each call's result or error, the
// page's console, and the CORS preflights chromium sent (seen through the
// DevTools protocol; page-level request events do not include preflights).
//
// Usage: node drive.mjs '{"pageUrl": "...", "calls": [{"fn": "runCommand", "args": [...]}]}'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

const { pageUrl, calls, executablePath = '/usr/bin/chromium', timeoutMs = 60000 } = JSON.parse(
  process.argv[2],
)
const report = { results: [], console: [], preflights: [], pageErrors: [] }
const userDataDir = mkdtempSync(join(tmpdir(), 'envd-chromium-'))
let context
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    timeout: timeoutMs,
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
  })
  const page = context.pages()[0] ?? (await context.newPage())
  page.setDefaultTimeout(timeoutMs)
  page.on('console', (m) => report.console.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => report.pageErrors.push(String(e)))

  const cdp = await context.newCDPSession(page)
  const preflights = new Map()
  cdp.on('Network.requestWillBeSent', (e) => {
    // Chromium marks a preflight by its initiator (the type says 'Other').
    if (e.initiator?.type === 'preflight' || e.type === 'Preflight') {
      preflights.set(e.requestId, {
        url: e.request.url,
        method: e.request.method,
        requestHeaders: e.request.headers,
      })
    }
  })
  cdp.on('Network.responseReceived', (e) => {
    const p = preflights.get(e.requestId)
    if (p !== undefined) {
      p.status = e.response.status
      p.responseHeaders = e.response.headers
    }
  })
  await cdp.send('Network.enable')

  await page.goto(pageUrl)
  await page.waitForFunction(() => window.envdTestReady === true)
  for (const { fn, args } of calls) {
    try {
      const value = await page.evaluate(
        ([name, callArgs]) => window.envdTest[name](...callArgs),
        [fn, args ?? []],
      )
      report.results.push({ ok: true, value })
    } catch (error) {
      report.results.push({ ok: false, error: String(error) })
    }
  }
  report.preflights = [...preflights.values()]
} catch (error) {
  report.fatal = String(error?.stack ?? error)
} finally {
  await context?.close().catch(() => {})
  rmSync(userDataDir, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify(report) + '\n')
process.exit(report.fatal ? 1 : 0)
