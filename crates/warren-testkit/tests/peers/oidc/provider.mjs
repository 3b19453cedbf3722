// A real OpenID Connect provider (npm oidc-provider) on loopback for warren's tests.
// Prints "issuer <url>" once listening. Clients:
//   warren-api / api-secret: client_credentials, access tokens as JWTs for the resources
//   api://warren and api://other (so a test can get a token for the wrong audience).
import Provider from 'oidc-provider';
import http from 'node:http';

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const resources = new Set(['api://warren', 'api://other']);
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'warren-api',
      client_secret: 'api-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    }],
    features: {
      devInteractions: { enabled: false },
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
  server.on('request', provider.callback());
  console.log(`issuer ${issuer}`);
});
