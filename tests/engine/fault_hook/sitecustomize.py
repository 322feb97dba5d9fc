"""Faults for the distributed engine's tests, in the stage processes torchrun starts.

Python imports this module at start-up in every process that has this folder on PYTHONPATH;
it acts only in a stage process (RANK is set) and only for the variables set:

- FMNIST_FAULT_SLOW_START=S: the stage sleeps S seconds first, so a stop signal finds it
  before it has a handler or a checkpoint (a stop during start-up);
- FMNIST_FAULT_EXIT_AT_END=R: rank R exits 1 right after the process group is destroyed,
  that is after the run's outputs are complete (a stage dying at the very end);
- FMNIST_FAULT_KILL_IN_SAVE=R:N: rank R writes its shard of the run's N-th checkpoint,
  then is killed (SIGKILL) before the save is complete (a node lost mid-save).
"""

import os

if os.environ.get("RANK") is not None:
    if os.environ.get("FMNIST_FAULT_SLOW_START"):
        import time

        time.sleep(float(os.environ["FMNIST_FAULT_SLOW_START"]))
    if os.environ.get("FMNIST_FAULT_EXIT_AT_END") == os.environ["RANK"]:
        import torch.distributed as dist

        _destroy = dist.destroy_process_group

        def _destroy_then_exit(*args, **kwargs):
            _destroy(*args, **kwargs)
            os._exit(1)

        dist.destroy_process_group = _destroy_then_exit
    rank_and_save = os.environ.get("FMNIST_FAULT_KILL_IN_SAVE", ":").split(":")
    if rank_and_save[0] == os.environ["RANK"]:
        import signal

        from torch.distributed.checkpoint import filesystem

        _write = filesystem.FileSystemWriter.write_data
        _saves = []

        def _write_then_die(self, *args, **kwargs):
            written = _write(self, *args, **kwargs)
            _saves.append(written)
            if len(_saves) == int(rank_and_save[1]):
                written.wait()  # the shard is on disk; the metadata never comes
                os.kill(os.getpid(), signal.SIGKILL)
            return written

        filesystem.FileSystemWriter.write_data = _write_then_die
