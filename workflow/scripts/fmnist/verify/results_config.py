"""Which configuration results/ holds the results of, so that the report and `snakemake
verify` never show one configuration's results under another's name.

The default target writes results/config.json (rule record_results_config): the
fingerprint of what shapes results/ (every run's settings, the data, the thread count)
and the command line's ``--configfile`` and ``--config`` that gave it. The report and
verify compare it with the configuration they are given now and refuse another one,
naming the options to repeat. Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

RESULTS_CONFIG = "results/config.json"


def fingerprint(runs: dict[str, dict], data_identity, threads: int) -> str:
    """sha256 of what shapes results/: the runs by id with their settings, what the data
    are (their sums or the synthetic data's settings) and each training job's threads.
    Not the rest (verify:, benchmark:, time limits, mirrors): they change no result."""
    shaping = {"runs": runs, "data": data_identity, "threads": threads}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def config_options(configfiles, config_args) -> str:
    """The command line's options that chose the configuration, as a user types them
    ("--configfile config/demo.yaml sweep.yaml"); "" for the defaults alone."""
    words = []
    if configfiles:
        words += ["--configfile", *(_relative(f) for f in configfiles)]
    if config_args:
        words += ["--config", *config_args]
    return shlex.join(words)


def _relative(path) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def stamp_text(digest: str, options: str) -> str:
    return json.dumps({"fingerprint": digest, "options": options}, indent=2) + "\n"


def _shown(options: str) -> str:
    return f"`{options}`" if options else "no --configfile (config/config.yaml alone)"


def mismatch(digest: str, options: str, what: str, path=RESULTS_CONFIG) -> str | None:
    """Why results/ cannot be shown as this configuration's (None when it can, or when no
    results/config.json says otherwise): ``what`` is what was asked ("build the report")."""
    try:
        stamp = json.loads(Path(path).read_text(encoding="utf-8"))
        theirs, their_options = stamp["fingerprint"], stamp["options"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path}: cannot read it ({err}); run the workflow again to rewrite it"
    if theirs == digest:
        return None
    return (
        f"results/ holds the results of another configuration ({path}: made with "
        f"{_shown(their_options)}), not of this one ({_shown(options)}). To {what} of "
        f"those results, repeat {_shown(their_options)}; for this configuration's, run "
        f"`{f'snakemake {options}'.strip()}` first (with your profile)."
    )
