"""Oura's OAuth2 authorization code grant, as a user's own Oura application uses it.

Settings (read by `OAuthConfig.from_env`):

- `LIFEOPS_OURA_CLIENT_ID`, `LIFEOPS_OURA_CLIENT_SECRET` or `LIFEOPS_OURA_CLIENT_SECRET_FILE`:
  the application's credentials (Oura's developer portal);
- `LIFEOPS_OURA_AUTHORIZE_URL` (default `https://cloud.ouraring.com/oauth/authorize`, Oura's
  documented authorization endpoint);
- `LIFEOPS_OURA_TOKEN_URL`: unset, the documented `https://api.ouraring.com/oauth/token` is
  tried first and, when it answers `400 invalid_request` (as it does for applications of the
  new developer portal), `https://moi.ouraring.com/oauth/v2/ext/oauth-token`; set, only it;
- `LIFEOPS_OURA_REVOKE_URL` (default `https://api.ouraring.com/oauth/revoke`);
- `LIFEOPS_OURA_REDIRECT_URI` (default `http://localhost:8765/callback`; registered in the
  application exactly so).

Scope: `daily` only (sleep, readiness and activity summaries).

Oura's refresh tokens are single use: a refresh answers a new pair and the old refresh token
is dead. A refused refresh (`invalid_grant`, or a 400/401 naming the token) is `OuraLoginNeeded`.
"""

from __future__ import annotations

import datetime as dt
import secrets
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import httpx
import msgspec

from lifeops_oura.api import OuraError, OuraUnavailable
from lifeops_oura.tokens import Token, read_token_file
from mesh import ConfigError

AUTHORIZE_URL = "https://cloud.ouraring.com/oauth/authorize"
TOKEN_URL = "https://api.ouraring.com/oauth/token"  # documented; legacy portal applications
TOKEN_URL_NEW_PORTAL = "https://moi.ouraring.com/oauth/v2/ext/oauth-token"
REVOKE_URL = "https://api.ouraring.com/oauth/revoke"
REDIRECT_URI = "http://localhost:8765/callback"
SCOPE = "daily"


class OuraLoginNeeded(OuraError):
    """The user has no usable OAuth tokens: `lifeops-mesh oura login --user ID` again."""

    reason = "login_needed"

    def __init__(self, user_id: str, why: str) -> None:
        self.user_id = user_id
        self.why = why
        super().__init__(
            f"Oura sync of {user_id}: {why}; log in again: lifeops-mesh oura login --user {user_id}"
        )


class OAuthError(OuraError):
    """The token endpoint refused a request for another reason than the grant (a wrong client
    id or secret, a redirect URI that does not match the application's)."""

    reason = "oauth"


class OAuthConfig(msgspec.Struct, frozen=True, kw_only=True):
    client_id: str
    client_secret: str  # kept out of repr by `__repr__` below
    authorize_url: str = AUTHORIZE_URL
    token_urls: tuple[str, ...] = (TOKEN_URL, TOKEN_URL_NEW_PORTAL)
    revoke_url: str = REVOKE_URL
    redirect_uri: str = REDIRECT_URI
    scope: str = SCOPE
    timeout_s: float = 15.0

    def __repr__(self) -> str:
        return f"OAuthConfig(client_id={self.client_id!r}, client_secret='***')"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OAuthConfig | None:
        """None when LIFEOPS_OURA_CLIENT_ID is not set (personal access tokens only)."""
        client_id = env.get("LIFEOPS_OURA_CLIENT_ID", "").strip()
        if not client_id:
            return None
        path = env.get("LIFEOPS_OURA_CLIENT_SECRET_FILE", "").strip()
        if path:
            secret = read_token_file(Path(path), "LIFEOPS_OURA_CLIENT_SECRET_FILE").reveal()
        else:
            secret = env.get("LIFEOPS_OURA_CLIENT_SECRET", "").strip()
        if not secret:
            raise ConfigError(
                "LIFEOPS_OURA_CLIENT_ID is set: set LIFEOPS_OURA_CLIENT_SECRET or "
                "LIFEOPS_OURA_CLIENT_SECRET_FILE too (the application's client secret)"
            )
        token_url = env.get("LIFEOPS_OURA_TOKEN_URL", "").strip()
        return cls(
            client_id=client_id,
            client_secret=secret,
            authorize_url=env.get("LIFEOPS_OURA_AUTHORIZE_URL", "").strip() or AUTHORIZE_URL,
            token_urls=(token_url,) if token_url else (TOKEN_URL, TOKEN_URL_NEW_PORTAL),
            revoke_url=env.get("LIFEOPS_OURA_REVOKE_URL", "").strip() or REVOKE_URL,
            redirect_uri=env.get("LIFEOPS_OURA_REDIRECT_URI", "").strip() or REDIRECT_URI,
            timeout_s=float(env.get("LIFEOPS_OURA_TIMEOUT_S") or 15.0),
        )


class TokenSet:
    """An access token, its refresh token and when the access token expires."""

    __slots__ = ("access", "expires_at", "refresh")

    def __init__(self, access: Token, refresh: Token, expires_at: dt.datetime) -> None:
        self.access = access
        self.refresh = refresh
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"TokenSet(expires_at={self.expires_at.isoformat()})"


class _TokenReply(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: float = 86400.0


class _ErrorReply(msgspec.Struct):
    error: str = ""
    error_description: str = ""
    detail: str = ""


def new_state() -> str:
    return secrets.token_urlsafe(24)


def authorization_url(config: OAuthConfig, state: str) -> str:
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": config.client_id,
            "redirect_uri": config.redirect_uri,
            "scope": config.scope,
            "state": state,
        }
    )
    return f"{config.authorize_url}?{query}"


def code_from_redirect(url: str, state: str) -> str:
    """The `code` of the URL Oura redirected the browser to, once its `state` is the one this
    login sent (anything else is someone else's redirect: refused)."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url.strip()).query))
    if query.get("state") != state:
        raise ConfigError(
            "the redirect's state does not match this login (an old or someone else's link): "
            "start the login again"
        )
    if "error" in query:
        raise ConfigError(f"Oura refused the authorization: {query['error']}")
    code = query.get("code", "")
    if not code:
        raise ConfigError("the redirect URL has no code: paste the whole URL of the address bar")
    return code


async def exchange_code(
    config: OAuthConfig, code: str, transport: httpx.AsyncBaseTransport | None = None
) -> TokenSet:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": config.redirect_uri}
    return await _token_request(config, form, "", transport)


async def refresh(
    config: OAuthConfig,
    user_id: str,
    refresh_token: Token,
    transport: httpx.AsyncBaseTransport | None = None,
) -> TokenSet:
    """A new pair for the refresh token (which is dead from then on, whatever happens next)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
    return await _token_request(config, form, user_id, transport)


async def revoke(
    config: OAuthConfig, access: Token, transport: httpx.AsyncBaseTransport | None = None
) -> bool:
    """Oura's revoke endpoint; True when it answered 2xx."""
    try:
        async with httpx.AsyncClient(timeout=config.timeout_s, transport=transport) as http:
            resp = await http.get(config.revoke_url, params={"access_token": access.reveal()})
    except httpx.HTTPError:
        return False
    return resp.is_success


async def _token_request(
    config: OAuthConfig,
    form: dict[str, str],
    user_id: str,
    transport: httpx.AsyncBaseTransport | None,
) -> TokenSet:
    form = {**form, "client_id": config.client_id, "client_secret": config.client_secret}
    urls = list(config.token_urls)
    async with httpx.AsyncClient(timeout=config.timeout_s, transport=transport) as http:
        while True:
            url = urls.pop(0)
            try:
                resp = await http.post(url, data=form, headers={"Accept": "application/json"})
            except httpx.TransportError as exc:
                raise OuraUnavailable(
                    "network", f"Oura token endpoint: no answer from {url}: {type(exc).__name__}"
                ) from exc
            if resp.is_success:
                return _token_set(resp)
            failure = _refusal(resp, url, user_id)
            # invalid_request at the documented endpoint: an application of the new portal
            # (the code or refresh token is not consumed); the next endpoint, once.
            if urls and isinstance(failure, OAuthError) and "invalid_request" in str(failure):
                continue
            raise failure


def _token_set(resp: httpx.Response) -> TokenSet:
    try:
        reply = msgspec.json.decode(resp.content, type=_TokenReply)
        access, fresh = Token(reply.access_token), Token(reply.refresh_token)
    except (msgspec.DecodeError, ConfigError) as exc:
        raise OAuthError("Oura token endpoint: the answer holds no token pair") from exc
    now = dt.datetime.now(dt.UTC)
    return TokenSet(access, fresh, now + dt.timedelta(seconds=max(0.0, reply.expires_in)))


def _refusal(resp: httpx.Response, url: str, user_id: str) -> OuraError:
    status = resp.status_code
    if status == 429 or status >= 500:
        return OuraUnavailable(
            "rate_limited" if status == 429 else "server_error",
            f"Oura token endpoint {url} answered {status}",
        )
    try:
        err = msgspec.json.decode(resp.content, type=_ErrorReply)
    except msgspec.DecodeError:
        err = _ErrorReply()
    if err.error == "invalid_grant" and user_id:
        return OuraLoginNeeded(user_id, "Oura refused the refresh token (invalid_grant)")
    code = err.error or f"HTTP {status}"
    text = (err.error_description or err.detail)[:200]
    return OAuthError(f"Oura token endpoint {url}: {code}{': ' + text if text else ''}")
