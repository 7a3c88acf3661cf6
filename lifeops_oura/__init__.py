"""The Oura Cloud API v2 as LifeOps Mesh reads it: daily documents (daily_sleep,
daily_readiness, daily_activity) from downloaded files, merged into one score set per day.

Shared by the LifeOps agent and the `lifeops-mesh oura` commands; it knows the contract's
payloads (`OuraDay`) and nothing of the runtime.
"""

from lifeops_oura.files import KINDS, load_days

__all__ = ["KINDS", "load_days"]
