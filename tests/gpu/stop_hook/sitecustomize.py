"""A SIGTERM at a fixed training step, for the GPU check's stop-and-resume checks.

Python imports this module at start-up in every process that has this folder on PYTHONPATH.
With FMNIST_SIGTERM_AFTER_STEPS=N set, the process's N-th optimizer step sends SIGTERM once:
to the process itself (FMNIST_SIGTERM_TO=self, the single-process engine) or to its parent
(FMNIST_SIGTERM_TO=parent: a stage process of the distributed engine signals the launcher, as
Ctrl-C or scancel would; only rank 0 does). Both engines take one optimizer step per batch,
so the stop is asked for at a known batch, not at a time that races the training.
"""

import os

if os.environ.get("FMNIST_SIGTERM_AFTER_STEPS") and os.environ.get("RANK", "0") == "0":
    import signal

    import torch

    _AFTER = int(os.environ["FMNIST_SIGTERM_AFTER_STEPS"])
    _TARGET = os.environ.get("FMNIST_SIGTERM_TO", "self")
    _step = torch.optim.Adam.step
    _taken = [0]

    def _step_then_signal(self, *args, **kwargs):
        result = _step(self, *args, **kwargs)
        _taken[0] += 1
        if _taken[0] == _AFTER:
            os.kill(os.getppid() if _TARGET == "parent" else os.getpid(), signal.SIGTERM)
        return result

    torch.optim.Adam.step = _step_then_signal
