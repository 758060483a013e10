"""CPU time of another process, read from /proc: what a server spent while it was measured.

``/proc/<pid>/stat`` gives the process's user and system time summed over all
its threads, in clock ticks (usually 10 ms). Over a window of seconds that is
precise enough, and it costs the measured process nothing.
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICK
