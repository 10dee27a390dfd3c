// A real OpenID Provider for Portcullis's single sign-on tests: oidc-provider with the
// device authorization grant, one public client and a few test accounts.
//
//   node server.mjs PORT
//
// Environment:
//   IDP_DEVICE_CODE_TTL  seconds a device code lives (default 600)
//   IDP_REDIRECT_URIS    comma-separated redirect URIs: the client then also takes the
//                        authorization code grant (with PKCE), for the web console
//   IDP_TAMPER           "audience": ID tokens carry another audience, re-signed with
//                        the provider's own key; "unknown-key": ID tokens are signed by a
//                        key the provider does not publish. Both stand for a provider
//                        (or a machine in the middle) the proxy must not believe.
//
// Signing keys are made at each start, as oidc-provider does without configured keys,
// so a restart rotates them. Prints "listening" on stdout once it serves.
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;

// Log in at the provider's login page with the account name (any password).
const accounts = {
  jdoe: { email: 'jdoe@example.com', email_verified: true, groups: ['sre'] },
  asmith: { email: 'asmith@example.com', email_verified: true, groups: ['developers'] },
  carol: { email: 'carol@example.com', email_verified: true, groups: ['sre', 'db-admins'] },
  mallory: { email: 'mallory@evil.test', email_verified: true, groups: ['sre'] },
  unverified: { email: 'unverified@example.com', email_verified: false, groups: ['sre'] },
};

async function signingKey(kid) {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  return { ...(await jose.exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
}
const key = await signingKey(crypto.randomUUID());
const stray = await signingKey('stray');

const redirects = (process.env.IDP_REDIRECT_URIS || '').split(',').filter(Boolean);
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'portcullis',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code',
      ...(redirects.length ? ['authorization_code'] : [])],
    response_types: redirects.length ? ['code'] : [],
    redirect_uris: redirects,
  }],
  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
  },
  // Otherwise email and groups stay out of the device grant's ID token.
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'groups'],
  jwks: { keys: [key] },
  ttl: { DeviceCode: Number(process.env.IDP_DEVICE_CODE_TTL || 600) },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
});

const tamper = process.env.IDP_TAMPER;
if (tamper) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path !== '/token' || ctx.status !== 200 || !ctx.body?.id_token) return;
    const claims = jose.decodeJwt(ctx.body.id_token);
    let signer = key;
    if (tamper === 'audience') claims.aud = 'someone-else';
    else if (tamper === 'unknown-key') signer = stray;
    const id_token = await new jose.SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: signer.kid })
      .sign(await jose.importJWK(signer, 'RS256'));
    ctx.body = { ...ctx.body, id_token };
  });
}

provider.listen(port, '127.0.0.1', () => console.log('listening'));
