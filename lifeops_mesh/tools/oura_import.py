"""`lifeops-mesh oura import`: days from Oura API v2 files, sent to LifeOps in chunks."""

from __future__ import annotations

from pathlib import Path

from lifeops_contract import contract
from lifeops_contract.schemas import OuraImportRequest
from lifeops_mesh.tools.progress import progress
from lifeops_oura import load_days
from mesh import ConfigError, MeshClient


async def import_days(url: str, user_id: str, target: Path, chunk: int) -> int:
    days = load_days(target)
    imported = skipped = 0
    async with MeshClient(url, contract()) as client:
        with progress(total=len(days), unit="day") as bar:
            for start in range(0, len(days), chunk):
                part = days[start : start + chunk]
                reply = await client.request(
                    "oura_import", OuraImportRequest(user_id=user_id, days=part)
                )
                if not reply.success:
                    raise ConfigError(f"import refused: {reply.error.code}: {reply.error.message}")
                imported += reply.imported
                skipped += reply.skipped
                bar.update(len(part))
    print(f"{target}: {len(days)} days for {user_id}: {imported} new, {skipped} already imported")
    return 0
