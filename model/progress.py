"""Progress bars for long work (training, evaluation, export): live on a terminal, sparse in a log.

On a terminal the bar redraws in place. Written to a file or pipe (CI, `docker logs`, nohup),
every redraw would be appended, so there it updates at most every 30 seconds.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 30.0


def progress_bar(*, total: int, desc: str, unit: str, disable: bool | None = False, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr; `disable=None` turns it off where stderr is not a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=sys.stderr,
                dynamic_ncols=interactive, mininterval=0.5 if interactive else LOG_INTERVAL_SECONDS)
