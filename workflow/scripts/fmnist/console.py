"""What a run tells its log: plain lines on stdout, flushed at once (a job may be killed).

In the distributed engine only rank 0 speaks (quiet() in the others); errors still reach
stderr from every process.
"""

_quiet = False


def quiet() -> None:
    global _quiet
    _quiet = True


def log(message: str) -> None:
    if not _quiet:
        print(message, flush=True)
