"""Run as a separate process: claim jobs from a queue file until none is left, print their ids.

Used by the test that several processes sharing one SQLite file never claim the same job.
"""

from __future__ import annotations

import asyncio
import sys
import time

from service.storage.sqlite.database import Database
from service.storage.sqlite.queue import SQLiteJobQueue


async def main(path: str, owner: str) -> None:
    db = await Database.open(path)
    queue = await SQLiteJobQueue.open(db)
    while (job := await queue.claim(owner, lease_seconds=3600, now=time.time())) is not None:
        sys.stdout.write(job.id + "\n")
    await db.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
