// A real OpenID Connect provider for the tests, laid out like a Keycloak realm, so that
// python-keycloak talks to it unchanged:
//   /realms/<realm>/.well-known/openid-configuration
//   /realms/<realm>/protocol/openid-connect/{auth,token,certs,userinfo,logout}
// Access tokens are JWTs carrying realm_access.roles, resource_access.<client>.roles and
// groups, as Keycloak's mappers put them. Sign-in is a plain HTML form (no script) that a
// test posts with `requests`; first-party clients get no consent screen, as in Keycloak.
//
// Usage: node tests/oidc/server.mjs SETTINGS.json
// SETTINGS: { realm, signingKey (private JWK), cookieKeys, accessTokenTTL, clients: [...],
//             users: { name: { password, sub, email, name, realmRoles, clientRoles, groups } } }
// Prints one line "listening <issuer>" once it answers, then serves until killed.

import { readFileSync } from 'node:fs';
import http from 'node:http';

import express from 'express';
import Provider from 'oidc-provider';

const settings = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const realm = settings.realm;
const base = `/realms/${realm}`;
const RESOURCE = 'urn:vre:platform';
const users = settings.users;
const bySub = new Map(Object.entries(users).map(([name, u]) => [u.sub, { ...u, name }]));

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function claimsOf(account, clientId) {
  const clientRoles = {};
  for (const [client, roles] of Object.entries(account.clientRoles || {})) {
    clientRoles[client] = { roles };
  }
  return {
    preferred_username: account.name,
    email: account.email,
    email_verified: true,
    name: account.displayName || account.name,
    groups: account.groups || [],
    realm_access: { roles: account.realmRoles || [] },
    resource_access: clientRoles,
    ...(clientId ? { azp: clientId } : {}),
  };
}

const configuration = {
  clients: settings.clients,
  jwks: { keys: [settings.signingKey] },
  cookies: { keys: settings.cookieKeys },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', 'roles'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    roles: ['realm_access', 'resource_access'],
  },
  // Keycloak puts the profile claims in the ID token of the code flow too.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = `<!doctype html><html><body><h1>Sign out of ${escape(realm)}?</h1>${form}
          <button type="submit" form="op.logoutForm" value="yes" name="logout">Sign out</button>
          </body></html>`;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async () => ({
        scope: 'platform',
        audience: 'vre',
        accessTokenTTL: settings.accessTokenTTL || 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  async extraTokenClaims(ctx, token) {
    if (token.kind === 'ClientCredentials') {
      // Keycloak's service account: a user named after the client, with its realm roles.
      const roles = settings.serviceAccounts?.[token.clientId]?.realmRoles || [];
      return { preferred_username: `service-account-${token.clientId}`,
        realm_access: { roles }, azp: token.clientId };
    }
    const account = bySub.get(token.accountId);
    if (!account || token.kind !== 'AccessToken') return undefined;
    return claimsOf(account, token.clientId);
  },
  async findAccount(ctx, sub) {
    const account = bySub.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() { return { sub, ...claimsOf(account) }; },
    };
  },
  // First-party clients: the grant is given without a consent screen.
  async loadExistingGrant(ctx) {
    const { client, session } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId,
      accountId: session.accountId });
    grant.addOIDCScope('openid offline_access profile email groups roles');
    grant.addResourceScope(RESOURCE, 'platform');
    await grant.save();
    session.grantIdFor(client.clientId, grant.jti);
    return grant;
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  interactions: { url: async (ctx, interaction) => `${base}/login-actions/${interaction.uid}` },
  routes: {
    authorization: '/protocol/openid-connect/auth',
    token: '/protocol/openid-connect/token',
    jwks: '/protocol/openid-connect/certs',
    userinfo: '/protocol/openid-connect/userinfo',
    end_session: '/protocol/openid-connect/logout',
    introspection: '/protocol/openid-connect/token/introspect',
    revocation: '/protocol/openid-connect/revoke',
  },
  ttl: {
    AccessToken: settings.accessTokenTTL || 300,
    IdToken: settings.accessTokenTTL || 300,
    AuthorizationCode: 60,
    Interaction: 600,
    Grant: 3600,
    Session: 3600,
    RefreshToken: 3600,
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><html><body><h1>error</h1><pre>${escape(JSON.stringify(out))}</pre>
      </body></html>`;
  },
};

const app = express();
let provider;

function loginPage(uid, message) {
  return `<!doctype html><html><body><h1>Sign in to ${escape(realm)}</h1>
    ${message ? `<p class="error">${escape(message)}</p>` : ''}
    <form id="kc-form-login" method="post" action="${base}/login-actions/${escape(uid)}">
      <input name="username"><input name="password" type="password">
      <button type="submit">Sign in</button></form></body></html>`;
}

app.get(`${base}/login-actions/:uid`, async (req, res, next) => {
  try {
    const { uid } = await provider.interactionDetails(req, res);
    res.type('html').send(loginPage(uid));
  } catch (err) { next(err); }
});

app.post(`${base}/login-actions/:uid`, express.urlencoded({ extended: false }),
  async (req, res, next) => {
    try {
      const { uid, prompt } = await provider.interactionDetails(req, res);
      const user = users[req.body.username];
      if (!user || user.password !== req.body.password) {
        res.status(401).type('html').send(loginPage(uid, 'Invalid username or password.'));
        return;
      }
      const result = { login: { accountId: user.sub } };
      if (prompt.name === 'consent') result.consent = {};
      await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
    } catch (err) { next(err); }
  });

const server = http.createServer(app);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}${base}`;
  provider = new Provider(issuer, configuration);
  app.use(base, provider.callback());
  process.stdout.write(`listening ${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
