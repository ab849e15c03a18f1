/**
 * The chat page at GET /, in a real headless Chromium (Debian's, driven by playwright-core; no browser
 * download): it loads with nothing but same-origin requests, says the model has random weights, streams a
 * reply with TTFT and tokens/s, Stop ends a reply, and an error is shown. Skipped (visibly) where no
 * Chromium is installed; .ci/run installs it.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { existsSync } from 'node:fs'
import { startServer, type RunningServer } from '../routes/server.ts'
import { FakeModel } from './helpers/fake-model.ts'

// The page functions run in the browser; this project type-checks without the DOM library.
declare const document: any

const CHROMIUM = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find(
  (p) => p && existsSync(p),
)
if (!CHROMIUM) console.log('SKIPPED: chat page browser test (no Chromium; apt-get install chromium)')

describe.skipIf(!CHROMIUM)('chat page in Chromium', () => {
  let srv: RunningServer
  let fake: FakeModel
  let browser: import('playwright-core').Browser
  const foreign: string[] = []

  beforeAll(async () => {
    fake = new FakeModel()
    fake.behaviour.reply = 'Hello from the fake model.'
    fake.behaviour.tokenDelayMs = 15
    srv = await startServer({ model: fake, port: 0, quiet: true })
    const { chromium } = await import('playwright-core')
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: 30_000 })
  }, 60_000)
  afterAll(async () => {
    await browser?.close()
    await srv?.stop()
  })

  async function open() {
    const page = await browser.newPage()
    page.on('request', (r) => {
      if (!r.url().startsWith(srv.url) && !r.url().startsWith('data:')) foreign.push(r.url())
    })
    await page.goto(`${srv.url}/`)
    await page.waitForFunction(() => !document.getElementById('model')!.textContent!.includes('connecting'))
    return page
  }

  test('loads, says the weights are random, streams a reply with TTFT and tok/s', async () => {
    const page = await open()
    expect(await page.textContent('#model')).toContain('fake-model')
    expect(await page.isVisible('#banner')).toBe(true)
    expect(await page.textContent('#banner')).toContain('RANDOM weights')
    await page.fill('#max-tokens', '20')
    await page.fill('#input', 'Hi there')
    await page.press('#input', 'Enter')
    await page.waitForFunction(() => document.querySelector('.msg.assistant .meta')?.textContent?.includes('finish'))
    const reply = await page.textContent('.msg.assistant')
    const meta = await page.textContent('.msg.assistant .meta')
    console.log(`reply: ${reply}\nmeta: ${meta}`)
    expect(reply).toContain('Hello from the fake')
    expect(meta).toMatch(/TTFT \d+ ms · [\d.]+ tok\/s · \d+ tokens · finish: length/)
    expect(await page.textContent('#stats')).toMatch(/TTFT \d+ ms/)
    expect(foreign).toEqual([])
    await page.close()
  }, 30_000)

  test('Stop ends a reply', async () => {
    fake.behaviour.tokenDelayMs = 200
    try {
      const page = await open()
      expect(await page.inputValue('#max-tokens')).toBe('32') // clamped to half the fake model's context
      await page.fill('#input', 'Tell me more')
      await page.click('#send')
      await page.waitForFunction(() => (document.querySelector('.msg.assistant')?.textContent ?? '').length >= 2)
      expect(await page.isEnabled('#stop')).toBe(true)
      await page.click('#stop')
      await page.waitForFunction(() => document.querySelector('.msg.assistant .meta')?.textContent?.includes('stopped'))
      const text = await page.evaluate(() => document.querySelector('.msg.assistant')!.firstChild!.textContent!)
      console.log(`stopped after: ${text}`)
      expect(text.length).toBeLessThan(fake.behaviour.reply.length)
      expect(await page.isEnabled('#send')).toBe(true)
      await page.close()
    } finally {
      fake.behaviour.tokenDelayMs = 15
    }
  }, 30_000)

  test('an error is shown', async () => {
    const page = await open()
    await page.fill('#max-tokens', '100000') // beyond the fake model's context: a 400 from the server
    await page.fill('#input', 'Hi')
    await page.click('#send')
    await page.waitForSelector('.msg.error')
    const err = await page.textContent('.msg.error')
    console.log(err)
    expect(err).toMatch(/^Error: .*context/)
    await page.close()
  }, 30_000)
})
