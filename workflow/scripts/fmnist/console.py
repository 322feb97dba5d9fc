"""What a run tells its log: plain lines on stdout, flushed at once (a job may be killed)."""


def log(message: str) -> None:
    print(message, flush=True)
