#!/usr/bin/env node
// An SSH_ASKPASS program for the single sign-on tests: OpenSSH runs it with the
// proxy's keyboard-interactive prompt as its argument. It notes the prompt, approves
// (or refuses, or ignores) the device login at the test provider as the user would in
// a browser, then answers the prompt with an empty line (Enter).
//
// Environment:
//   ASKPASS_LOG      file the prompt is appended to (the tests count the calls)
//   ASKPASS_ACCOUNT  the provider account to log in as (default jdoe)
//   ASKPASS_DO       "approve" (default), "deny" at the provider, or "ignore"
import fs from 'node:fs';
import { approve } from './browser.mjs';

const prompt = process.argv[2] ?? '';
if (process.env.ASKPASS_LOG) {
  fs.appendFileSync(process.env.ASKPASS_LOG, `${JSON.stringify(prompt)}\n`);
}
const url = prompt.match(/https?:\/\/\S+/);
// The code stands alone on its line.
const code = prompt.split('\n').map((l) => l.trim()).find((l) => /^[A-Z0-9]{4}-[A-Z0-9]{4}$/.test(l));
const what = process.env.ASKPASS_DO || 'approve';
if (url && code && what !== 'ignore') {
  // The page the URL opens asks for the code again: enter it there, as a user would.
  const entry = new URL(url[0]);
  entry.search = '';
  try {
    await approve(entry.toString(), code, {
      account: process.env.ASKPASS_ACCOUNT || 'jdoe',
      deny: what === 'deny',
    });
  } catch (e) {
    process.stderr.write(`askpass: ${e.message}\n`);
  }
}
process.stdout.write('\n');
