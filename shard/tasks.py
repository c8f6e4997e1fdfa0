"""The daemon's side tasks (snapshot, trim, heartbeat): waiting one out without raising."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_out(task: asyncio.Task[Any]) -> None:
    """Wait until ``task`` has ended, and mark its error (if any) as seen: the caller has
    chosen to drop it. The caller's own cancellation still propagates."""
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()
