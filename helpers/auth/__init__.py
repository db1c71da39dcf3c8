"""The auth helper: a reverse proxy in each pod that lets only the instance's users through.

It sits between the listener helper and the tool (see :mod:`protocol.pod`) and is an OAuth2
client of the portal (authorization code + PKCE S256, confidential client):

- a request without a valid session for this instance is sent to the portal's authorize
  endpoint (GET/HEAD) or refused with 401 (other methods, WebSocket upgrades);
- the callback (``protocol.pod.CALLBACK_PATH``) checks ``state`` against the login this browser
  started, exchanges the code, verifies the access token against the portal's JWKS (audience =
  this instance), and sets a session cookie for the instance host only;
- the session lives here, in memory; the cookie holds only a random id, so a cookie of instance
  A means nothing to instance B. Access tokens are renewed with the refresh token before they
  expire, and each renewal re-checks access at the portal;
- HTTP and WebSocket are proxied to the tool with the helper's own cookies removed;
- ``protocol.pod.LOGOUT_PATH`` ends the session.

Modules: ``config`` (settings from the environment), ``portal`` (token endpoint and JWKS),
``sessions`` (sessions and logins in progress), ``proxy`` (forwarding), ``app`` (the web
application tying them together), ``errors`` (the exception tree).

Runs on Debian bookworm's aiohttp 3.8 (the helpers image) and on current aiohttp alike.
"""
