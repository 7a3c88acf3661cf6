"""`lifeops-mesh oura import` and `oura sync`: Oura days (from API v2 files, or fetched from the
Oura API with the user's token) sent to LifeOps in chunks of `oura_import` requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import msgspec

from lifeops_contract import contract
from lifeops_contract.schemas import OuraDay, OuraImportReply, OuraImportRequest
from lifeops_mesh.tools.progress import progress
from lifeops_oura import (
    KINDS,
    OuraClient,
    OuraError,
    Token,
    load_days,
    read_token_file,
    token_for,
    token_sources,
)
from mesh import ConfigError, MeshClient

DEFAULT_SYNC_DAYS = 30


async def send_days(url: str, user_id: str, days: list[OuraDay], chunk: int) -> OuraImportReply:
    """Every day to LifeOps, `chunk` a request; the replies' counts added up."""
    total = OuraImportReply()
    async with MeshClient(url, contract()) as client:
        with progress(total=len(days), unit="day") as bar:
            for start in range(0, len(days), chunk):
                part = days[start : start + chunk]
                reply = await client.request(
                    "oura_import", OuraImportRequest(user_id=user_id, days=part)
                )
                if not reply.success:
                    raise ConfigError(f"import refused: {reply.error.code}: {reply.error.message}")
                total = msgspec.structs.replace(
                    total,
                    imported=total.imported + reply.imported,
                    skipped=total.skipped + reply.skipped,
                    revised=total.revised + reply.revised,
                )
                bar.update(len(part))
    return total


def _summary(source: str, n: int, user_id: str, r: OuraImportReply) -> str:
    line = f"{source}: {n} days for {user_id}: {r.imported} new, {r.skipped} already imported"
    return f"{line}, {r.revised} revised" if r.revised else line


async def import_days(url: str, user_id: str, target: Path, chunk: int) -> int:
    days = load_days(target)
    reply = await send_days(url, user_id, days, chunk)
    print(_summary(str(target), len(days), user_id, reply))
    return 0


def sync_token(user_id: str, token_file: Path | None, env: Mapping[str, str]) -> Token:
    """--token-file, else LIFEOPS_OURA_TOKEN_FILE_<USER> or LIFEOPS_OURA_TOKEN_<USER>."""
    if token_file is not None:
        return read_token_file(token_file, "--token-file")
    token = token_for(user_id, env)
    if token is None:
        raise ConfigError(
            f"no Oura token for {user_id}: pass --token-file, or set " + token_sources(user_id)
        )
    return token


async def fetch_days(token: Token, base_url: str, since: dt.date, until: dt.date) -> list[OuraDay]:
    """The days since..until from the three daily endpoints, with a progress bar of pages."""
    with progress(total=len(KINDS), unit="endpoint") as bar:
        done: set[str] = set()

        def on_page(kind: str, n: int) -> None:
            bar.set_postfix_str(f"{kind} +{n}", refresh=False)
            if kind not in done:
                done.add(kind)
                bar.update(1)

        async with OuraClient(token, base_url=base_url) as oura:
            return await oura.days(since, until, on_page=on_page)


async def sync_days(
    url: str,
    user_id: str,
    token: Token,
    *,
    base_url: str,
    since: dt.date | None,
    chunk: int,
) -> int:
    """`oura sync`: fetch since..today from the Oura API, then send to LifeOps."""
    today = dt.datetime.now(dt.UTC).date()
    since = since or today - dt.timedelta(days=DEFAULT_SYNC_DAYS)
    try:
        days = await fetch_days(token, base_url, since, today + dt.timedelta(days=1))
    except OuraError as exc:
        raise ConfigError(str(exc)) from exc
    reply = await send_days(url, user_id, days, chunk)
    print(_summary(f"Oura API since {since}", len(days), user_id, reply))
    return 0
