"""The Oura Cloud API v2 as LifeOps Mesh reads it: daily documents (daily_sleep,
daily_readiness, daily_activity) from downloaded files or fetched from the API with an OAuth2
access token (lifeops_oura.oauth, lifeops_oura.token_store) or a personal access token, merged
into one score set per day.

Shared by the LifeOps agent and the `lifeops-mesh oura` commands; it knows the contract's
payloads (`OuraDay`) and nothing of the runtime but its backoff and its store interface (the
token store).
"""

from lifeops_oura.api import (
    DEFAULT_BASE_URL,
    OuraAuthError,
    OuraClient,
    OuraError,
    OuraResponseError,
    OuraUnavailable,
)
from lifeops_oura.documents import KINDS
from lifeops_oura.files import load_days
from lifeops_oura.tokens import Token, env_suffix, read_token_file, token_for, token_sources

__all__ = [
    "DEFAULT_BASE_URL",
    "KINDS",
    "OuraAuthError",
    "OuraClient",
    "OuraError",
    "OuraResponseError",
    "OuraUnavailable",
    "Token",
    "env_suffix",
    "load_days",
    "read_token_file",
    "token_for",
    "token_sources",
]
