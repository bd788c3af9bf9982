// The e2b JS SDK's browser build, driven from tests/test_browser.py through drive.mjs.
// Every function returns plain JSON so the test can assert on it.
import { Sandbox } from 'e2b'

async function sandbox(envdUrl, accessToken) {
  // Debug mode: no E2B API calls, every envd request goes to sandboxUrl.
  if (!accessToken) return Sandbox.create({ debug: true, sandboxUrl: envdUrl })
  // In debug mode create() has no way to pass the envd access token that the
  // E2B API would hand out, so build the handle as create() does, with the token
  // and the envd version envd-py reports.
  return new Sandbox({
    sandboxId: 'debug_sandbox_id',
    envdVersion: '0.5.2',
    envdAccessToken: accessToken,
    debug: true,
    sandboxUrl: envdUrl,
  })
}

window.envdTest = {
  async runCommand(envdUrl, cmd, accessToken, user) {
    const sbx = await sandbox(envdUrl, accessToken)
    const result = await sbx.commands.run(cmd, { user })
    return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr }
  },

  async readFile(envdUrl, path, accessToken) {
    const sbx = await sandbox(envdUrl, accessToken)
    return await sbx.files.read(path)
  },

  // A plain cross-origin fetch: what the page may see of the response is exactly
  // what CORS lets through (allowed origin, exposed headers).
  async rawFetch(url, init) {
    const response = await fetch(url, init)
    return {
      status: response.status,
      headers: Object.fromEntries(response.headers.entries()),
      body: await response.text(),
    }
  },

  async errorText(fn, ...args) {
    try {
      await window.envdTest[fn](...args)
      return null
    } catch (error) {
      return `${error.name}: ${error.message}`
    }
  },
}
window.envdTestReady = true
