"""fmnist/verify/results_config.py: the report and `snakemake verify` refuse results/ made
under another configuration, naming the options to repeat (the workflow:
test_verify_workflow.py)."""

from __future__ import annotations

from fmnist.verify import results_config

RUNS = {"lr=0.01": {"lr": 0.01, "epochs": 3}, "lr=0.003": {"lr": 0.003, "epochs": 3}}
DATA = {"train_size": 2000, "test_size": 500, "seed": 0}


def test_the_fingerprint_is_what_shapes_the_results():
    digest = results_config.fingerprint(RUNS, DATA, 4)
    assert results_config.fingerprint(dict(reversed(RUNS.items())), DATA, 4) == digest
    assert results_config.fingerprint({"base": {"lr": 0.01, "epochs": 3}}, DATA, 4) != digest
    assert results_config.fingerprint(RUNS, {**DATA, "seed": 1}, 4) != digest
    assert results_config.fingerprint(RUNS, DATA, 2) != digest


def test_the_options_are_written_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [tmp_path / "config/demo.yaml", tmp_path / "sweep.yaml"]
    assert results_config.config_options(files, []) == "--configfile config/demo.yaml sweep.yaml"
    assert results_config.config_options([], ["train={epochs: 1}"]) == (
        "--config 'train={epochs: 1}'"
    )
    assert results_config.config_options([], []) == ""


def test_another_configuration_is_refused_naming_the_configfile(tmp_path):
    stamp = tmp_path / "config.json"
    sweep = results_config.fingerprint(RUNS, DATA, 1)
    default = results_config.fingerprint({"base": {"lr": 0.01}}, DATA, 1)
    options = "--configfile config/demo.yaml sweep.yaml"
    assert results_config.mismatch(default, "", "build the report", stamp) is None  # no stamp
    stamp.write_text(results_config.stamp_text(sweep, options))
    assert results_config.mismatch(sweep, options, "build the report", stamp) is None
    said = results_config.mismatch(default, "", "build the report", stamp)
    assert said == (
        f"results/ holds the results of another configuration ({stamp}: made with "
        "`--configfile config/demo.yaml sweep.yaml`), not of this one (no --configfile "
        "(config/config.yaml alone)). To build the report of those results, repeat "
        "`--configfile config/demo.yaml sweep.yaml`; for this configuration's, run "
        "`snakemake` first (with your profile)."
    )
    stamp.write_text("{")
    assert "cannot read it" in results_config.mismatch(sweep, options, "verify", stamp)
