"""The application every fleet test serves: ``fastrpc serve tests.fleet_app:server`` from the repository root.

Environment:
    FLEET_LOG   file that gets one line per completed ``work`` call (required)
    FLEET_NAME  this server's name, returned with every result (default "fleet")

The log is opened with O_APPEND and each record is one ``os.write`` of a whole line, so records
from every incarnation of a server (and concurrent calls) land whole, one per line, and survive a
SIGKILL: the file is what the tests count executions from.
"""

import asyncio
import os

import fastrpc

SERVER_NAME = os.environ.get("FLEET_NAME", "fleet")
_log = os.open(os.environ["FLEET_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

server = fastrpc.Server()


@server.method
async def work(call_id, delay=0.0):
    """A non-idempotent call: wait ``delay`` seconds, then record that ``call_id`` ran (once per run)."""
    await asyncio.sleep(delay)
    os.write(_log, f"{call_id}\n".encode())
    return {"server": SERVER_NAME, "id": call_id}
