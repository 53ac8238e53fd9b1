"""Progress bars for work that may take more than a second (many descriptions, a preload).

On stderr, shown only after a second and only on a terminal: a short job prints
nothing extra, and logs and pipes stay clean.
"""

from __future__ import annotations

import sys
from typing import Any


def progress(total: int, description: str, unit: str) -> Any:
    """A tqdm bar over `total` items; use as a context manager, `update(n)` as work completes."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, delay=1.0, disable=None, file=sys.stderr, dynamic_ncols=True)
