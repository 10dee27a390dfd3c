#!/usr/bin/env node
// Signs in at the test provider as a browser would, for the web console's tests:
//   node signin.mjs AUTHORIZATION_URL BACK_PREFIX ACCOUNT
// prints the address the provider sends the browser back to (not followed).
import { authorize } from './browser.mjs';

const [url, back, account] = process.argv.slice(2);
try {
  process.stdout.write(`${await authorize(url, back, { account })}\n`);
} catch (e) {
  process.stderr.write(`signin: ${e.message}\n`);
  process.exit(1);
}
