// What a user does in the browser to approve (or refuse) a device login at the test
// provider (server.mjs), scripted over HTTP with a cookie jar, as a browser would.
//
//   import { approve } from './browser.mjs';
//   await approve(verificationUri, userCode, { account: 'jdoe', deny: false });

const jar = new Map();

function remember(res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
  }
}

function cookies() {
  return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
}

// Fetches `url` (a form post when `form` is given) and follows redirects, but not one
// to an address starting with `stopAt` (returned as `redirect`).
async function browse(url, form, stopAt) {
  let method = form ? 'POST' : 'GET';
  let body = form ? new URLSearchParams(form).toString() : undefined;
  for (let hops = 0; hops < 20; hops++) {
    const headers = { cookie: cookies() };
    if (body) headers['content-type'] = 'application/x-www-form-urlencoded';
    const res = await fetch(url, { method, body, headers, redirect: 'manual' });
    remember(res);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      url = new URL(location, url).toString();
      if (stopAt && url.startsWith(stopAt)) return { url, status: res.status, html: '', redirect: url };
      method = 'GET';
      body = undefined;
      continue;
    }
    return { url, status: res.status, html: await res.text() };
  }
  throw new Error(`too many redirects from ${url}`);
}

// The first form of a page: its action and hidden inputs.
function firstForm(page) {
  const form = page.html.match(/<form[^>]*action="([^"]*)"[^>]*>([\s\S]*?)<\/form>/);
  if (!form) throw new Error(`no form at ${page.url} (${page.status}): ${page.html.slice(0, 400)}`);
  const fields = {};
  for (const input of form[2].matchAll(/<input[^>]*>/g)) {
    const name = input[0].match(/name="([^"]*)"/);
    const value = input[0].match(/value="([^"]*)"/);
    if (name && /type="hidden"/.test(input[0])) fields[name[1]] = value ? value[1] : '';
  }
  return { action: new URL(form[1].replace(/&amp;/g, '&'), page.url).toString(), fields };
}

export async function approve(verificationUri, userCode, { account = 'jdoe', deny = false } = {}) {
  // The code entry page, then its confirmation page.
  let page = await browse(verificationUri);
  let form = firstForm(page);
  page = await browse(form.action, { ...form.fields, user_code: userCode });
  form = firstForm(page);
  if (deny) {
    page = await browse(form.action, { ...form.fields, abort: 'yes' });
    return page;
  }
  page = await browse(form.action, { ...form.fields, confirm: 'yes' });
  // The provider's login page (any password), then its consent page.
  for (let step = 0; step < 4 && /<form/.test(page.html); step++) {
    form = firstForm(page);
    const extra = form.fields.prompt === 'login' ? { login: account, password: 'secret' } : {};
    page = await browse(form.action, { ...form.fields, ...extra });
  }
  return page;
}

// A browser sign-in (authorization code): opens the application's authorization URL at
// the provider, logs in as `account` and consents, and returns where the provider
// sends the browser back (an address starting with `back`), not followed.
export async function authorize(authorizationUrl, back, { account = 'jdoe' } = {}) {
  let page = await browse(authorizationUrl, undefined, back);
  for (let step = 0; step < 6 && !page.redirect; step++) {
    const form = firstForm(page);
    const extra = form.fields.prompt === 'login' ? { login: account, password: 'secret' } : {};
    page = await browse(form.action, { ...form.fields, ...extra }, back);
  }
  if (!page.redirect) throw new Error(`never sent back to ${back}: ${page.url} ${page.status}`);
  return page.redirect;
}
