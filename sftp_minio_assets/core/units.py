"""How sizes and durations read in messages: one format everywhere (run logs, ticks, waits)."""

MIB = 1024 * 1024


def mib(size: int) -> str:
    return f"{size / MIB:,.1f} MiB"


def duration(seconds: float) -> str:
    """40 s, 75 min, 2 h 30 min, 3 d 4 h: whole units, the larger ones from an hour and a half on
    and from two days on."""
    seconds = max(seconds, 0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    hours = round(minutes / 60)
    return f"{hours // 24} d {hours % 24} h"
