// A real OpenID provider for relay's end-to-end tests: panva/oidc-provider (OpenID
// Certified) on loopback, issuing RFC 9068 JWT access tokens through the client
// credentials grant, the way a service or agent gets a token from Okta, Auth0 or Keycloak.
//
//   node tests/oidc/provider.mjs --port PORT --keys DIR --sign KID [--publish KID,KID...] [--alg RS256|ES256]
//
// Signing keys live in DIR as KID.json (private JWKs), made on first use, so restarting it
// with another --sign and both kids in --publish is a key rotation as identity providers
// do it (the next key published beside the current one), and dropping the old kid from
// --publish retires it. Clients and resource servers (audiences) are fixed below and
// named in tests/support/oidc.py. Prints "ready" once it listens.

import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    keys: { type: 'string' },
    sign: { type: 'string' },
    publish: { type: 'string' },
    alg: { type: 'string', default: 'RS256' },
  },
});
const port = Number(args.port);
const issuer = `http://127.0.0.1:${port}`;

function signingKey(kid) {
  const file = join(args.keys, `${kid}.json`);
  if (!existsSync(file)) {
    const pair = args.alg === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...pair.privateKey.export({ format: 'jwk' }), kid, alg: args.alg, use: 'sig' };
    writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  }
  return JSON.parse(readFileSync(file, 'utf8'));
}

// the signing key first: oidc-provider signs with the first key that fits the algorithm
const kids = [args.sign, ...(args.publish ? args.publish.split(',') : []).filter((kid) => kid !== args.sign)];

// resource indicator → what a token for it carries (RFC 8707: the client names the resource)
const RESOURCES = {
  'urn:relay:ingest': { audience: 'relay', scope: 'ingest:write ingest:read', accessTokenTTL: 600 },
  'urn:relay:short': { audience: 'relay', scope: 'ingest:write', accessTokenTTL: 2 },
  'urn:other:api': { audience: 'other-api', scope: 'ingest:write', accessTokenTTL: 600 },
};

const provider = new Provider(issuer, {
  jwks: { keys: kids.map(signingKey) },
  cookies: { keys: ['relay-tests-only'] },
  clients: [
    {
      client_id: 'ingest-agent',
      client_secret: 'ingest-agent-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:relay:ingest',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const info = RESOURCES[resource];
        if (!info) throw new Provider.errors.InvalidTarget();
        return { ...info, accessTokenFormat: 'jwt', jwt: { sign: { alg: args.alg } } };
      },
    },
  },
});
// plain http on loopback: no proxy in front, nothing to trust
provider.proxy = false;

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer} signing with ${args.sign}, publishing ${kids.join(', ')}\n`);
});
