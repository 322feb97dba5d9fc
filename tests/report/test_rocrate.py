"""`snakemake rocrate`: the results as a Provenance Run Crate (fmnist/report/rocrate.py).

Built once from the shared finished workflow (a sweep on synthetic data, two runs verified)
and validated with roc-validator, the RO-Crate community's validator, offline: the JSON-LD
contexts it would fetch are served from the copies in tests/rocrate/context/ through its own
HTTP cache (tests/rocrate/README.md). LICENSE and CITATION.cff are checked here too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from conftest import LOCAL, SHARED_RUNS, SHARED_VERIFIED
from helpers import REPO_ROOT, import_script, run_script, run_snakemake, slurm_job

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:rdflib"),  # inside roc-validator
]

SCRIPT = REPO_ROOT / "workflow" / "scripts" / "make_rocrate.py"
CONTEXTS = {
    "https://w3id.org/ro/crate/1.1/context": "1.1.jsonld",
    "https://w3id.org/ro/terms/workflow-run/context": "workflow-run.json",
}
PROFILES = ["provenance-run-crate-0.5", "workflow-run-crate-0.5"]
RUN_FILES = ["epochs.csv", "run.json", "model.pt", "timeline.csv"]
# What `snakemake rocrate` needs of the repository beside what tests' copies of it hold.
REPOSITORY_FILES = ["LICENSE", "CITATION.cff", "README.md", "requirements.txt"]


def validator():
    """roc-validator's services and models, or a failure saying how to install it."""
    try:
        from rocrate_validator import models, services
    except ImportError:  # pragma: no cover - a setup that skipped it
        pytest.fail(
            "roc-validator is missing: "
            "pip install --no-deps -r tests/rocrate/requirements-validator.txt"
        )
    return services, models


def fill_http_cache(cache: Path, contexts: dict[str, str]) -> None:
    """Store the local copies of ``contexts`` (address: file in tests/rocrate/context) in
    roc-validator's HTTP cache (requests-cache, SQLite) as the answers to their addresses."""
    import requests
    import requests_cache
    import urllib3

    class LocalCopies(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):
            name = contexts.get(request.url)
            if name is None:
                raise requests.ConnectionError(f"no local copy of {request.url}")
            data = (REPO_ROOT / "tests" / "rocrate" / "context" / name).read_bytes()
            raw = urllib3.HTTPResponse(
                body=io.BytesIO(data),
                headers={"Content-Type": "application/ld+json"},
                status=200,
                preload_content=False,
                request_url=request.url,
            )
            return requests.adapters.HTTPAdapter().build_response(request, raw)

        def close(self):
            pass

    session = requests_cache.CachedSession(str(cache), backend="sqlite", expire_after=-1)
    session.mount("https://", LocalCopies())
    session.mount("http://", LocalCopies())
    for url in contexts:
        assert session.get(url).status_code == 200
    session.close()


def validate(crate: Path, profile: str, cache: Path):
    """roc-validator's result for ``crate`` at its REQUIRED level, offline (answers only
    from ``cache``)."""
    services, models = validator()
    settings = models.ValidationSettings(
        rocrate_uri=str(crate),
        profile_identifier=profile,
        requirement_severity=models.Severity.REQUIRED,
        offline=True,
        cache_path=cache,
    )
    return services.validate(settings)


def issues(result) -> list[str]:
    return [
        f"{i.check.identifier}: {i.message} ({getattr(i, 'violatingEntity', None)})"
        for i in result.get_issues()
    ]


@pytest.fixture(scope="module")
def contexts_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("rocrate_http_cache") / "cache"
    fill_http_cache(cache, CONTEXTS)
    return cache


@pytest.fixture(scope="module")
def crate_workflow(finished_workflow, tmp_path_factory):
    """A copy of the finished workflow (and the repository files it lacks) after
    `snakemake rocrate`, with what it printed."""
    workdir = tmp_path_factory.mktemp("rocrate") / "wf"
    shutil.copytree(finished_workflow.ok(), workdir, symlinks=True)
    for name in REPOSITORY_FILES:
        shutil.copy2(REPO_ROOT / name, workdir / name)
    return workdir, run_snakemake(workdir, "rocrate", *LOCAL)


@pytest.fixture(scope="module")
def crate(crate_workflow) -> Path:
    workdir, result = crate_workflow
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return workdir / "results" / "ro-crate"


@pytest.fixture(scope="module")
def graph(crate) -> dict[str, dict]:
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    return {entity["@id"]: entity for entity in metadata["@graph"]}


def ids(value) -> list[str]:
    return [v["@id"] for v in (value if isinstance(value, list) else [value])]


def test_the_target_makes_only_the_crate(crate_workflow, crate):
    workdir, result = crate_workflow
    stats = result.stdout + result.stderr
    assert "rocrate        1" in stats and "total          1" in stats, stats[-3000:]
    assert (workdir / "results" / "ro-crate.zip").is_file()


@pytest.mark.parametrize("profile", PROFILES)
def test_the_crate_validates_against_the_workflow_run_profiles(crate, contexts_cache, profile):
    result = validate(crate, profile, contexts_cache)
    assert issues(result) == []
    assert result.passed()
    # Every check ran: none was skipped, e.g. for a resource missing offline.
    assert not result.skipped_check_details, result.skipped_check_details


def test_offline_validation_needs_the_contexts(crate, tmp_path):
    """The check is real: without the contexts in its cache, the crate fails validation."""
    result = validate(crate, PROFILES[0], tmp_path / "empty")
    assert not result.passed()
    assert any("Unable to retrieve the JSON-LD context" in issue for issue in issues(result))


def test_the_crate_is_ro_crate_1_1_with_the_provenance_run_profile(crate, graph):
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    assert metadata["@context"] == [
        "https://w3id.org/ro/crate/1.1/context",
        "https://w3id.org/ro/terms/workflow-run/context",
    ]
    assert "https://w3id.org/ro/crate/1.1" in ids(graph["ro-crate-metadata.json"]["conformsTo"])
    root = graph["./"]
    assert set(ids(root["conformsTo"])) >= {
        "https://w3id.org/ro/wfrun/process/0.5",
        "https://w3id.org/ro/wfrun/workflow/0.5",
        "https://w3id.org/ro/wfrun/provenance/0.5",
    }
    assert "SYNTHETIC" in root["name"] and "Verification passed" in root["description"]
    assert graph[root["license"]["@id"]]["identifier"] == "MIT"
    for name in ("LICENSE", "CITATION.cff"):
        assert name in ids(root["hasPart"]) and (crate / name).is_file()


def test_the_workflow_is_the_snakefile_in_snakemake_with_its_steps(graph):
    workflow = graph[graph["./"]["mainEntity"]["@id"]]
    assert workflow["@id"] == "Snakefile"
    assert {"File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"} <= set(
        workflow["@type"]
    )
    language = graph[workflow["programmingLanguage"]["@id"]]
    assert language["name"] == "Snakemake" and language["version"]
    steps = {graph[s]["name"] for s in ids(workflow["step"])}
    assert steps >= {"train_model_parallel", "gather_tables", "compare_reproduction"}
    tool = graph["workflow/rules/train.smk#train_model_parallel"]
    assert "#param/train.lr" in ids(tool["input"])
    assert "workflow/scripts/train.py" in ids(tool["hasPart"])
    assert "workflow/rules/train.smk" in graph
    # One ControlAction per job, all organised by Snakemake's OrganizeAction.
    organize = graph["#snakemake-run"]
    assert organize["result"]["@id"] == "#workflow-run"
    controls = [graph[c] for c in ids(organize["object"])]
    assert {c["object"]["@id"] for c in controls} >= {
        f"#train_model_parallel/{run}" for run in SHARED_RUNS
    }


@pytest.mark.parametrize("run", SHARED_RUNS)
def test_each_training_job_is_an_action_with_its_settings_data_and_results(
    crate, graph, finished_workflow, run
):
    record = json.loads(
        (finished_workflow.workdir / "results" / "runs" / run / "run.json").read_text()
    )
    action = graph[f"#train_model_parallel/{run}"]
    assert action["@type"] == "CreateAction"
    assert action["instrument"]["@id"] == "workflow/rules/train.smk#train_model_parallel"
    assert action["startTime"] == record["attempts"][0]["started"]
    assert action["endTime"] == record["attempts"][-1]["finished"]
    objects = [graph[o] for o in ids(action["object"])]
    settings = {o["name"]: o for o in objects if o["@type"] == "PropertyValue"}
    assert settings["train.lr"]["value"] == record["params"]["lr"]
    assert settings["train.lr"]["exampleOfWork"]["@id"] == "#param/train.lr"
    assert json.loads(settings["train.devices"]["value"]) == record["params"]["devices"]
    data = {o["name"]: o["md5"] for o in objects if o["@type"] == "File"}
    assert data == record["setup"]["data_md5"]
    results = ids(action["result"])
    assert results == [f"results/runs/{run.replace('=', '%3D')}/{name}" for name in RUN_FILES]
    assert [graph[h]["name"] for h in ids(action["location"])] == [
        record["attempts"][-1]["hostname"]
    ]
    usage = {graph[u]["propertyID"]: graph[u]["value"] for u in ids(action["resourceUsage"])}
    assert usage["wall_seconds"] > 0 and "cpu_hours" in usage


def test_the_tables_figures_and_verification_are_results_of_their_jobs(graph):
    assert "results/tables/compute.md" in ids(graph["#gather_tables"]["result"])
    assert "results/figures/loss.pdf" in ids(graph["#plot_training_curves"]["result"])
    statement = graph["results/tables/compute.md"]["description"]
    assert statement.startswith("Compute resources.")
    compare = graph["#compare_reproduction"]
    verdicts = [graph[v] for v in ids(compare["result"]) if v.startswith("#verdict/")]
    assert {v["name"] for v in verdicts} == {f"verdict on {run}" for run in SHARED_VERIFIED}
    assert {v["value"] for v in verdicts} == {"reproduced (bit-identical)"}
    for run in SHARED_VERIFIED:
        assert f"#verify_training/{run}" in graph
    assert "results/verify/reproduction.csv" in ids(graph["#workflow-run"]["result"])


def test_the_zip_unpacked_elsewhere_holds_every_referenced_file(crate_workflow, crate, tmp_path):
    workdir, _ = crate_workflow
    unpacked = tmp_path / "elsewhere"
    with zipfile.ZipFile(workdir / "results" / "ro-crate.zip") as archive:
        archive.extractall(unpacked)
    text = (unpacked / "ro-crate-metadata.json").read_text()
    assert str(workdir) not in text and str(REPO_ROOT) not in text  # no path of this machine
    metadata = json.loads(text)
    files = 0
    for entity in metadata["@graph"]:
        at_id, types = entity["@id"], entity["@type"]
        types = types if isinstance(types, list) else [types]
        if at_id.startswith(("#", "http://", "https://")) or not {"File", "Dataset"} & set(types):
            continue
        path = Path(unquote(at_id.split("#")[0]))
        assert not path.is_absolute() and ".." not in path.parts, at_id
        assert (unpacked / path).exists(), at_id
        files += 1
        if "Dataset" in types:
            continue
        origin = workdir / path if path.parts[0] == "results" else None
        if origin is not None and origin.is_file():  # the results, byte for byte
            assert sha256(unpacked / path) == sha256(origin), at_id
    assert files > 100  # the workflow's files, the runs', the tables and figures
    for run in SHARED_RUNS:
        assert (unpacked / "results" / "runs" / run / "model.pt").is_file()
    used = yaml.safe_load((unpacked / "config" / "used.yaml").read_text())
    assert used["sweep"] == {"lr": [0.01, 0.003], "seed": [0, 1]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_requeued_slurm_run_on_fashion_mnist(crate_workflow, contexts_cache, tmp_path):
    """A run requeued once under SLURM (two attempts of one job, on two nodes), on data from
    a public mirror: the hosts, the job and the data's download addresses, still valid."""
    workdir = tmp_path / "wf"
    shutil.copytree(crate_workflow[0], workdir, symlinks=True, ignore=ignore_crate)
    run = workdir / "results" / "runs" / SHARED_RUNS[0] / "run.json"
    record = json.loads(run.read_text())
    last = record["attempts"][-1]
    first = {**last, "hostname": "n1", "slurm": {**slurm_job("4242"), "cluster": "test"}}
    first["stopped"] = "the SLURM time limit is near"
    del first["finished"]
    record["attempts"] = [first, {**last, "hostname": "n2", "slurm": first["slurm"]}]
    run.write_text(json.dumps(record, indent=2))
    mirror = "https://example.org/fashion-mnist/"
    config = {"data": {"synthetic": None, "mirrors": ["/local/copy", mirror]}}
    make_rocrate = import_script("make_rocrate")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        code = make_rocrate.main(
            [f"results/runs/{r}" for r in SHARED_RUNS]
            + ["--config-json", json.dumps(config), "--out", "crate", "--zip", "crate.zip"]
        )
    assert code == 0
    metadata = json.loads((workdir / "crate" / "ro-crate-metadata.json").read_text())
    graph = {entity["@id"]: entity for entity in metadata["@graph"]}
    action = graph[f"#train_model_parallel/{SHARED_RUNS[0]}"]
    assert [graph[h]["name"] for h in ids(action["location"])] == ["n1", "n2"]
    (job,) = ids(action["identifier"])
    assert graph[job]["value"] == "4242" and "partition debug" in graph[job]["description"]
    assert action["startTime"] == first["started"] and "2 attempt(s)" in action["description"]
    data = [o for o in ids(action["object"]) if graph[o]["@type"] == "File"]
    assert data == [f"{mirror}{name}" for name in sorted(record["setup"]["data_md5"])]
    result = validate(workdir / "crate", PROFILES[0], contexts_cache)
    assert issues(result) == [] and result.passed()


def ignore_crate(folder, names):
    return [n for n in names if n.startswith("ro-crate")]


def test_a_missing_table_is_an_error_naming_it(crate_workflow, tmp_path):
    workdir = tmp_path / "wf"
    shutil.copytree(crate_workflow[0], workdir, symlinks=True, ignore=ignore_crate)
    (workdir / "results" / "tables" / "compute.csv").unlink()
    runs = [f"results/runs/{r}" for r in SHARED_RUNS]
    command = [sys.executable, str(SCRIPT), *runs, "--config-json", "{}"]
    command += ["--out", "crate", "--zip", "crate.zip"]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 1
    assert "compute.csv" in result.stderr and not (workdir / "crate").exists()


def test_help():
    result = run_script(SCRIPT, "--help")
    assert result.returncode == 0 and "Provenance Run Crate" in result.stdout


def test_license_is_mit_for_the_contributors():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 The fmnist model-parallel contributors" in text


def test_citation_file_is_cff_1_2_0():
    cff = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert {"message", "title", "authors", "version", "date-released", "license"} <= set(cff)
    assert cff["authors"] == [{"name": "The fmnist model-parallel contributors"}]
    assert cff["license"] == "MIT"
    dt.date.fromisoformat(cff["date-released"])  # a YYYY-MM-DD date, quoted: a string
    assert isinstance(cff["version"], str) and "repository-code" not in cff
