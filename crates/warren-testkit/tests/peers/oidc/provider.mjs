// A real OpenID Connect provider (npm oidc-provider) on loopback for warren's tests.
// Prints "issuer <url>" once listening. Clients:
//   warren-api / api-secret: client_credentials, access tokens as JWTs for the resources
//   api://warren and api://other (so a test can get a token for the wrong audience).
//   warren-web / web-secret: authorization code (with PKCE), for the edge's openid-connect
//   action; its redirect URIs come from OIDC_REDIRECT_URIS (comma-separated).
// Sign-in is oidc-provider's own login and consent forms (devInteractions): any login name
// with any password; the account's claims are derived from the name.
// A request carrying `x-test-clock-skew: SECONDS` runs with the provider's clock moved by
// that much, so a test can get a token that really expired (signed by the provider, with the
// provider's iat and exp) without waiting.
import Provider from 'oidc-provider';
import http from 'node:http';

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const resources = new Set(['api://warren', 'api://other']);
  const redirects = (process.env.OIDC_REDIRECT_URIS || '').split(',').filter(Boolean);
  const clients = [{
    client_id: 'warren-api',
    client_secret: 'api-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  }];
  if (redirects.length) {
    clients.push({
      client_id: 'warren-web',
      client_secret: 'web-secret',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: redirects,
    });
  }
  const provider = new Provider(issuer, {
    clients,
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    // The ID token carries the claims the scopes asked for (as Google's and Keycloak's do).
    conformIdTokenClaims: false,
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, email: `${id}@example.test`, email_verified: true, name: `Test User ${id}` }),
    }),
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'api://warren',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          if (!resources.has(resource)) throw new Error(`unknown resource ${resource}`);
          return { scope: 'api', audience: resource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        },
      },
    },
  });
  provider.proxy = false;
  provider.use(async (ctx, next) => {
    const skew = Number(ctx.get('x-test-clock-skew') || 0);
    if (!skew) return next();
    const realNow = Date.now;
    Date.now = () => realNow() + skew * 1000;
    try {
      await next();
    } finally {
      Date.now = realNow;
    }
  });
  server.on('request', provider.callback());
  console.log(`issuer ${issuer}`);
});
