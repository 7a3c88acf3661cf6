"""The OAuth2 client against the stand-in over real HTTP: settings, the redirect's state, the
exchange, single-use refresh tokens (`invalid_grant` is a login needed), the documented token
endpoint falling over to the new portal's on `invalid_request`, revocation; the token store's
refresh keeps a pair whose commit failed instead of sending a dead refresh token."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from pathlib import Path

import httpx
import pytest

from lifeops_agent.repository import MIGRATIONS
from lifeops_oura import Token
from lifeops_oura import token_store as ts
from lifeops_oura.oauth import (
    TOKEN_URL,
    TOKEN_URL_NEW_PORTAL,
    OAuthConfig,
    OAuthError,
    OuraLoginNeeded,
    authorization_url,
    code_from_redirect,
    exchange_code,
    refresh,
    revoke,
)
from mesh import ConfigError, open_store
from tests.support.oura_standin import OuraStandIn, oura_standin


def config_for(api: OuraStandIn, **kw: str) -> OAuthConfig:
    env = {
        "LIFEOPS_OURA_CLIENT_ID": api.oauth.client_id,
        "LIFEOPS_OURA_CLIENT_SECRET": api.oauth.client_secret,
        "LIFEOPS_OURA_AUTHORIZE_URL": f"{api.base_url}/oauth/authorize",
        "LIFEOPS_OURA_TOKEN_URL": f"{api.base_url}/oauth/token",
        "LIFEOPS_OURA_REVOKE_URL": f"{api.base_url}/oauth/revoke",
        "LIFEOPS_OURA_REDIRECT_URI": "http://127.0.0.1:1/callback",
        **kw,
    }
    config = OAuthConfig.from_env(env)
    assert config is not None
    return config


async def authorized_code(api: OuraStandIn, config: OAuthConfig, state: str) -> str:
    async with httpx.AsyncClient() as browser:
        r = await browser.get(authorization_url(config, state))
    assert r.status_code == 302
    return code_from_redirect(r.headers["location"], state)


def test_settings(tmp_path: Path) -> None:
    assert OAuthConfig.from_env({}) is None
    with pytest.raises(ConfigError, match="LIFEOPS_OURA_CLIENT_SECRET"):
        OAuthConfig.from_env({"LIFEOPS_OURA_CLIENT_ID": "id"})
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    env = {"LIFEOPS_OURA_CLIENT_ID": "id", "LIFEOPS_OURA_CLIENT_SECRET_FILE": str(secret)}
    config = OAuthConfig.from_env(env)
    assert config is not None and config.client_secret == "s3cr3t-value"
    assert config.token_urls == (TOKEN_URL, TOKEN_URL_NEW_PORTAL)
    assert "s3cr3t" not in repr(config)
    url = urllib.parse.urlsplit(authorization_url(config, "st"))
    query = dict(urllib.parse.parse_qsl(url.query))
    assert url.netloc == "cloud.ouraring.com" and query["scope"] == "daily"
    assert query["state"] == "st" and query["response_type"] == "code"


def test_a_redirect_of_another_login_is_refused() -> None:
    good = "http://localhost:8765/callback?code=abc&state=mine"
    assert code_from_redirect(good, "mine") == "abc"
    with pytest.raises(ConfigError, match="state does not match"):
        code_from_redirect(good, "other")
    with pytest.raises(ConfigError, match="refused"):
        code_from_redirect("http://x/cb?error=access_denied&state=mine", "mine")


async def test_exchange_refresh_once_and_revoke() -> None:
    async with oura_standin() as api:
        api.oauth.login_as = "acct"
        config = config_for(api)
        pair = await exchange_code(config, await authorized_code(api, config, "s1"))
        assert api.oauth.account_of(pair.access.reveal()) == "acct"
        fresh = await refresh(config, "ada", pair.refresh)
        assert fresh.refresh != pair.refresh
        with pytest.raises(OuraLoginNeeded, match="oura login --user ada"):
            await refresh(config, "ada", pair.refresh)  # single use
        with pytest.raises(OAuthError, match="invalid_client"):
            await refresh(config_for(api, LIFEOPS_OURA_CLIENT_SECRET="wrong"), "ada", fresh.refresh)
        assert await revoke(config, fresh.access)
        assert api.oauth.account_of(fresh.access.reveal()) is None


async def test_the_new_portals_endpoint_after_invalid_request() -> None:
    """Unset LIFEOPS_OURA_TOKEN_URL: the documented endpoint, then the new portal's when the
    first answers invalid_request (here: a second path of the stand-in standing in for it)."""
    async with oura_standin() as api:
        api.oauth.login_as = "acct"
        config = config_for(api)
        code = await authorized_code(api, config, "s2")
        wrong_client = f"{api.base_url}/oauth/authorize"  # answers 400 invalid_request to POST
        both = OAuthConfig(
            client_id=config.client_id,
            client_secret=config.client_secret,
            token_urls=(wrong_client, f"{api.base_url}/oauth/token"),
            redirect_uri=config.redirect_uri,
        )
        pair = await exchange_code(both, code)
        assert api.oauth.account_of(pair.access.reveal()) == "acct"


async def test_a_pair_whose_commit_failed_is_stored_next_time(tmp_path: Path) -> None:
    """The refresh's commit fails: the new pair stays in memory and the next renew stores it
    without sending the (now dead) refresh token again."""
    store = open_store(f"sqlite:///{tmp_path / 'l.db'}")
    await store.open()
    await store.migrate("lifeops", MIGRATIONS)
    try:
        async with oura_standin() as api:
            api.oauth.login_as = "acct"
            config = config_for(api)
            pair = await exchange_code(config, await authorized_code(api, config, "s3"))
            async with store.transaction() as tx:
                await ts.save(tx, "ada", pair, 1)
            tokens = ts.OAuthTokens(store, config, margin_s=0)
            async with store.transaction() as tx:  # the next write of the row fails
                await tx.execute(
                    "CREATE TRIGGER no_update BEFORE UPDATE ON lifeops_oura_tokens"
                    " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
                )
            with pytest.raises(Exception, match="disk trouble"):
                await tokens.renew("ada", pair.access)
            assert api.oauth.refreshes == 1
            async with store.transaction() as tx:
                await tx.execute("DROP TRIGGER no_update")
            access = await tokens.renew("ada", pair.access)
            assert api.oauth.refreshes == 1 and api.oauth.invalid_grants == 0
            assert api.oauth.account_of(access.reveal()) == "acct"
            async with store.read() as tx:
                row = await ts.load(tx, "ada")
            assert row is not None and row.generation == 2 and row.access == access.reveal()
            assert await tokens.access("ada") == Token(row.access)
            assert row.expires_at > dt.datetime.now(dt.UTC)
    finally:
        await store.close()
