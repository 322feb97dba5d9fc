"""Which peer a failed collective was waiting for, and whether it is stopped or gone.

gloo says only that an operation timed out or that a connection closed; on many nodes that
names no one. So every rank beats in the rendezvous store (a counter it adds 1 to each
second, from a thread of its own), and a rank whose collective fails reads the counters
twice a few seconds apart: a counter that did not move belongs to a process that is
stopped, overloaded or cut off, or to one that ended; which of the two, gloo's error tells
(a timeout, or a closed connection). Counts, not times: the hosts' clocks may differ.
Nothing is added to a training step; the diagnosis costs a few seconds on a run that
fails anyway.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import contextmanager

from fmnist.cluster.stop import STOP_SIGNALS

BEAT_SECONDS = 1.0
QUIET_SECONDS = 3.0  # three beats: a live process beats in them even under load
READ_SECONDS = 5.0  # the store answers in milliseconds; longer means its host does not
ALIVE = "fmnist/alive"
# gloo's words (lower case), for an operation that timed out and for a peer that is gone;
# a pair closed by a timeout fails the other operations on it with the second.
TIMED_OUT = ("timed out waiting", "application timeout caused pair closure")
ENDED = ("connection closed by peer", "connection reset by peer", "broken pipe")


class PeerFailure(RuntimeError):
    """A peer of this stage's process stopped answering or ended (the message names it);
    transient: the run can go on from its last checkpoint."""


def failure_kind(err: BaseException) -> str | None:
    """'timeout' or 'ended' for gloo's errors about a peer, None for any other error."""
    text = str(err).lower()
    if any(words in text for words in TIMED_OUT):
        return "timeout"
    return "ended" if any(words in text for words in ENDED) else None


class PeerWatch:
    """This rank's heartbeat in the store, and the diagnosis when a collective fails."""

    def __init__(self, store, rank: int, ranks: list[dict], timeout_seconds: int, holder: str):
        # A connection of our own: each operation on a store holds its connection until
        # answered, and torch's way to share a store between threads is a clone per thread.
        self.store = store.clone()
        self.rank, self.ranks, self.timeout, self.holder = rank, ranks, timeout_seconds, holder
        self.quiet_seconds = QUIET_SECONDS
        self._stopped = threading.Event()
        self.store.add(f"{ALIVE}/{rank}", 1)  # before any collective: every key exists
        threading.Thread(target=self._beat, name="fmnist-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stopped.wait(BEAT_SECONDS):
            try:
                self.store.add(f"{ALIVE}/{self.rank}", 1)
            except RuntimeError:  # the store is gone: the run is ending one way or another
                return

    def stop(self) -> None:
        self._stopped.set()

    def explain(self, err: RuntimeError) -> PeerFailure | None:
        """A PeerFailure naming the peers that stopped beating (or the store that stopped
        answering) when ``err`` is gloo's about a peer; None otherwise."""
        kind = failure_kind(err)
        if kind is None:
            return None
        with stop_signals_ignored():
            try:
                first = within(READ_SECONDS, self._counts)
                time.sleep(self.quiet_seconds)
                second = within(READ_SECONDS, self._counts)
            except TimeoutError:
                return PeerFailure(self._sentence(self.holder, "timeout", err))
            except RuntimeError:  # its connection closed: the store's process is gone
                return PeerFailure(self._sentence(self.holder, "ended", err))
        silent = [r for r in range(len(self.ranks)) if r != self.rank and first[r] == second[r]]
        if not silent:  # every peer still beats: gloo's own words are all there is
            return None
        return PeerFailure(self._sentence(" and ".join(map(self.describe, silent)), kind, err))

    def _counts(self) -> list[int]:
        # add(key, 0) reads a counter without waiting for it, unlike get.
        return [self.store.add(f"{ALIVE}/{r}", 0) for r in range(len(self.ranks))]

    def describe(self, rank: int) -> str:
        return f"stage {rank}'s process (rank {rank} on host {self.ranks[rank]['hostname']})"

    def _sentence(self, who: str, kind: str, err: RuntimeError) -> str:
        what = (
            f"did not answer within {self.timeout} s (stopped, overloaded or its node unreachable)"
            if kind == "timeout"
            else "ended (its process or node is gone)"
        )
        return f"{who} {what}; {self.describe(self.rank)} gave up ({gloo_words(err)})"


def gloo_words(err: BaseException) -> str:
    """The error's first sentence, without the source file gloo puts before it."""
    first = (str(err).splitlines() or [""])[0]
    return re.sub(r"^\[[^\]]*\] ", "", first).split(". ")[0]


def within(seconds: float, call):
    """call() from a daemon thread, given up after ``seconds`` (TimeoutError): a store
    whose host is stopped never answers, and a blocked socket cannot be interrupted."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def stop_signals_ignored():
    """The launcher ends the other stages as soon as one fails (SIGTERM): the diagnosis,
    a few seconds of a process that fails anyway, must not be cut short by it."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
