"""Who this process is, for the leases and claims it takes in shared storage."""

from __future__ import annotations

import functools
import os
import socket
import uuid


@functools.cache
def process_owner() -> str:
    """``host:pid:random``: unique across replicas and restarts of the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
