"""Progress bars for the tools: tqdm, which draws on a terminal and stays silent when output is
a file or a pipe (no carriage returns in logs)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress(*, total: int, unit: str) -> tqdm[Any]:
    """A bar on stderr, shown only when stderr is a terminal."""
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=None, leave=False, ncols=80)
