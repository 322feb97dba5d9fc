"""The results as a Workflow Run RO-Crate: results/ro-crate/ and results/ro-crate.zip.

The crate follows the Provenance Run Crate profile 0.5 (https://w3id.org/ro/wfrun/provenance/0.5,
with the Workflow Run Crate and Process Run Crate 0.5 it extends) on RO-Crate 1.1, the version
those profiles build on (ro-crate-py writes 1.3 unless told, which they do not accept):

* the workflow: ``Snakefile`` as the main ComputationalWorkflow (language Snakemake with its
  version; the workflow's version is the checkout's git commit), every file of ``workflow/``,
  ``config/`` and ``profiles/``, the README, LICENSE, CITATION.cff and requirements.txt. Its
  formal parameters: the training settings (the schema's ``train:`` section), the four data
  files, the configuration, and what its steps write;
* a HowToStep and a tool per rule that made results (the rule, named in its .smk file) and a
  CreateAction per job, tied to its step by a ControlAction: each run's training (start and
  end from run.json, its settings as PropertyValues bound to the formal parameters, the data
  files with their MD5 sums, its results epochs.csv, run.json, model.pt and timeline.csv, its
  hosts as location, its SLURM jobs as identifiers, its compute as resourceUsage), each
  pipeline figure, the tables (with the compute statement), the figures, the report's pages,
  and after ``snakemake verify`` each rerun and the comparison (each verdict a PropertyValue);
  an OrganizeAction (Snakemake) and a CreateAction for the whole workflow.

Paths are relative and mirror the repository (``results/runs/{run}/model.pt``). Nothing outside
``results/`` and the repository's files is referred to: the data files, which live elsewhere,
are described (name, MD5, download address when public), not included. A job's start and end
come from Snakemake's record of its first output where there is one, else its end from the
file's time. Imports no torch: model.pt is copied as a file.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import shutil
import subprocess
import tempfile
from base64 import urlsafe_b64encode
from pathlib import Path

import yaml
from rocrate.model import ContextEntity
from rocrate.rocrate import ROCrate

from fmnist.config.settings import TRAIN_KEYS, TRAIN_SCHEMA
from fmnist.data.idx import FILE_NAMES as DATA_FILES
from fmnist.rundir.runfiles import (
    EPOCHS_FILE,
    MODEL_FILE,
    RECORD_FILE,
    RUNS_DIR,
    TIMELINE_FILE,
    Run,
    read_run_dir,
)

RO_CRATE_VERSION = "1.1"
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": ("Process Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/workflow/0.5": ("Workflow Run Crate", "0.5"),
    "https://w3id.org/ro/wfrun/provenance/0.5": ("Provenance Run Crate", "0.5"),
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": ("Workflow RO-Crate", "1.0"),
}
WORKFLOW_RUN_TERMS = "https://w3id.org/ro/terms/workflow-run/context"  # md5, resourceUsage
COMPLETED = "http://schema.org/CompletedActionStatus"
CONTRIBUTORS = "The fmnist model-parallel contributors"
MIT = "https://spdx.org/licenses/MIT"
REPOSITORY_FILES = ["LICENSE", "CITATION.cff", "README.md", "requirements.txt"]
REPOSITORY_FOLDERS = ["workflow", "config", "profiles"]
USED_CONFIG = "config/used.yaml"  # written into the crate: the configuration, merged

RUN_FILES = [EPOCHS_FILE, RECORD_FILE, MODEL_FILE, TIMELINE_FILE]
COMPARED = RUN_FILES[:3]  # what verify compares
TABLES = ["epochs.csv", "runs.csv", "summary.csv", "summary.md", "summary.tex"]
TABLES += ["provenance.csv", "compute.csv", "compute.md", "compute.tex"]
CSV_TABLES = [name for name in TABLES if name.endswith(".csv")]
PAGES = ["summary.html", "runs.html", "compute.html", "provenance.html", "overview.rst"]
FIGURES = [f"{name}.{ext}" for name in ("loss", "accuracy", "throughput") for ext in ("png", "pdf")]
PIPELINE = [f"figures/pipeline/{{run}}.{ext}" for ext in ("png", "pdf")]
RUN_PAGE = "tables/run_pages/{run}.html"
VERIFY_FILES = ["reproduction.csv", "reproduction.html", "verdict.rst"]
FORMATS = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".pt": "application/zip",  # torch.save's format
    ".png": "image/png",
    ".pdf": "application/pdf",
    ".md": "text/markdown",
    ".tex": "application/x-tex",
    ".html": "text/html",
    ".rst": "text/x-rst",
    ".yaml": "application/yaml",
    ".cff": "application/yaml",
    ".py": "text/x-python",
    ".smk": "text/x-snakemake",
    ".sh": "text/x-shellscript",
    ".txt": "text/plain",
    "": "text/plain",
}
SOFTWARE = {
    "python": ("Python", "https://www.python.org"),
    "torch": ("PyTorch", "https://pytorch.org"),
    "torchvision": ("torchvision", "https://pytorch.org/vision"),
    "snakemake": ("Snakemake", "https://snakemake.github.io"),
    "numpy": ("NumPy", "https://numpy.org"),
    "cuda": ("CUDA", "https://developer.nvidia.com/cuda-toolkit"),
    "cudnn": ("cuDNN", "https://developer.nvidia.com/cudnn"),
}
# A run's compute (compute.csv's columns, over its attempts) as resourceUsage:
# column: (UN/CEFACT unit code, unit, summed over attempts, else the largest).
USAGE = {
    "wall_seconds": ("SEC", "s", True),
    "gpu_hours": ("HUR", "GPU-hours", True),
    "cpu_hours": ("HUR", "CPU-hours", True),
    "alloc_gpus": ("C62", "GPUs", False),
    "alloc_cpus": ("C62", "CPUs", False),
    "max_rss_mb": ("4L", "MB", False),
    "energy_joules": ("JOU", "J", True),
}
# The rules whose jobs made the results: rule: (its script, what one job does).
STEPS = {
    "train_model_parallel": ("train.py", "trains one run of the sweep"),
    "plot_pipeline_timeline": ("plot_timeline.py", "draws a run's pipeline timeline"),
    "gather_tables": ("gather.py", "gathers the runs into tables and the compute statement"),
    "plot_training_curves": ("plot.py", "plots loss, accuracy and throughput per epoch"),
    "render_report_pages": ("render_pages.py", "renders the report's tables and run pages"),
    "verify_training": ("train.py", "trains a run again from scratch, as run.json records it"),
    "compare_reproduction": ("verify.py", "compares each rerun with its original, byte for byte"),
}


class CrateError(Exception):
    """A file the crate needs is missing or unreadable; the message names it."""


def setting_type(key: str) -> str:
    """A training setting's FormalParameter additionalType (lists and words: Text)."""
    kind = TRAIN_SCHEMA[key].get("type")
    return {"integer": "Integer", "number": "Float", "boolean": "Boolean"}.get(kind, "Text")


def setting_value(value):
    """A setting as a PropertyValue's value: scalars as they are, lists and null as JSON text
    (a JSON-LD array is a set: it would lose the order and repeated items)."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def plain(rst: str) -> str:
    """A paragraph of the report (reStructuredText) as plain text."""
    return re.sub(r"\\(.)", r"\1", rst.replace("**", "").replace("``", "")).strip()


def git_commit(repo: Path) -> tuple[str | None, bool]:
    """The checkout's commit and whether tracked files differ from it ((None, False) when
    ``repo`` is not a git checkout)."""

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)

    try:
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "-uno")
    except OSError:
        return None, False
    if head.returncode != 0:
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())


def rule_file(repo: Path, rule: str) -> str:
    """The .smk file (relative to the repository) that defines ``rule``."""
    pattern = re.compile(rf"^(rule {rule}:|use rule \S+ as {rule} )", re.MULTILINE)
    for path in sorted((repo / "workflow" / "rules").glob("*.smk")):
        if pattern.search(path.read_text()):
            return path.relative_to(repo).as_posix()
    return "Snakefile"


def read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise CrateError(f"{path}: {err.strerror}") from None


def link(entity, key: str, value) -> None:
    """Add ``value`` (an entity) to ``entity[key]`` unless it is there: a single value while
    it is the only one (RO-Crate 1.1 prefers that to a list of one)."""
    current = entity.get(key)
    current = [] if current is None else current if isinstance(current, list) else [current]
    if value.id not in {e.id for e in current}:
        entity.append_to(key, value, compact=not current)


class CrateBuilder:
    """The crate of one configuration's results. Paths are relative to the working directory,
    which holds ``results`` (normally the repository's root, ``repo``)."""

    def __init__(self, repo: Path, results: Path, config: dict, snakemake_dir: Path | None):
        self.repo, self.results, self.config = Path(repo), Path(results), config
        self.snakemake_dir = snakemake_dir
        self.crate = ROCrate(version=RO_CRATE_VERSION)
        self.crate.metadata.extra_contexts.append(WORKFLOW_RUN_TERMS)
        self.files: dict[str, object] = {}  # by their path in the crate
        self.params: dict[str, object] = {}
        self.tools: dict[str, object] = {}
        self.actions: list[object] = []
        self.controls: list[object] = []

    # ------------------------------------------------------------------- entities

    def entity(self, at_id: str, at_type, /, **properties):
        """The contextual entity ``at_id``, added with ``properties`` unless it exists."""
        existing = self.crate.get(at_id)
        if existing is not None:
            return existing
        return self.crate.add(ContextEntity(self.crate, at_id, {"@type": at_type, **properties}))

    def file(self, path: Path, dest: str, param: str | None = None, **properties):
        """The file ``path``, copied into the crate as ``dest``, an example of ``param``."""
        if dest not in self.files:
            if not path.is_file():
                raise CrateError(f"{path}: missing")
            properties = {"name": dest, "encodingFormat": FORMATS.get(path.suffix), **properties}
            properties = {key: value for key, value in properties.items() if value is not None}
            self.files[dest] = self.crate.add_file(
                path, dest_path=dest, properties=properties, record_size=True
            )
        if param is not None:
            link(self.files[dest], "exampleOfWork", self.params[param])
        return self.files[dest]

    def result(self, rel: str, param: str):
        """results/``rel``, at the same place in the crate; ``param`` with {run} for a run's."""
        return self.file(self.results / rel, f"results/{rel}", param)

    def parameter(self, key: str, name: str, kind: str, **properties):
        """A FormalParameter, self.params[key] (its @id ``key``, with RUN for {run})."""
        self.params[key] = self.entity(
            key.replace("{run}", "RUN"),
            "FormalParameter",
            name=name,
            additionalType=kind,
            valueRequired=False,
            conformsTo={"@id": "https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"},
            **properties,
        )

    def value(self, at_id: str, name: str, value, param: str, **properties):
        return self.entity(
            at_id,
            "PropertyValue",
            name=name,
            value=value,
            exampleOfWork=self.params[param],
            **properties,
        )

    # ------------------------------------------------------------------- workflow

    def add_workflow(self, snakemake_version: str | None) -> None:
        crate, repo = self.crate, self.repo
        for name in REPOSITORY_FILES:
            self.file(repo / name, name, about=crate.root_dataset)
        for folder in REPOSITORY_FOLDERS:
            for path in sorted((repo / folder).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    self.file(path, path.relative_to(repo).as_posix())
        self.files["LICENSE"]["description"] = "The license of the workflow and its results."
        self.files["CITATION.cff"]["description"] = "How to cite the workflow (CFF 1.2.0)."
        license_ = self.entity(MIT, "CreativeWork", name="MIT License", identifier="MIT")
        authors = self.entity("#contributors", "Organization", name=CONTRIBUTORS)
        self.commit, dirty = git_commit(repo)
        commit = self.commit
        description = (
            "Trains the PyTorch model-parallel tutorial's MLP on FashionMNIST, one job per run "
            "of a sweep, gathers tables, figures and a report, and verifies runs by training "
            "them again. Its rules are in workflow/rules/*.smk."
        )
        if commit and dirty:
            description += f" Made from commit {commit} with uncommitted changes."
        self.workflow = crate.add_workflow(
            repo / "Snakefile",
            "Snakefile",
            main=True,
            lang="snakemake",
            lang_version=snakemake_version,
            properties={
                "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
                "name": "Model-parallel FashionMNIST, reproducibly, on a cluster",
                "description": description,
                "encodingFormat": "text/x-snakemake",
                "conformsTo": {
                    "@id": "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"
                },
                "license": license_,
                "creator": authors,
                **({"version": commit} if commit else {}),
            },
        )
        self.files["Snakefile"] = self.workflow
        self.engine = self.entity(
            "https://snakemake.github.io",
            "SoftwareApplication",
            name="Snakemake",
            url="https://snakemake.github.io",
            **({"version": snakemake_version} if snakemake_version else {}),
        )
        self.add_parameters()

    def add_parameters(self) -> None:
        """The workflow's formal parameters: its inputs, and what its steps write."""
        for key in TRAIN_KEYS:
            entry, extra = TRAIN_SCHEMA[key], {}
            if "description" in entry:
                extra["description"] = entry["description"]
            if "default" in entry:
                extra["defaultValue"] = setting_value(entry["default"])
            self.parameter(f"#param/train.{key}", f"train.{key}", setting_type(key), **extra)
        for name in DATA_FILES:
            self.parameter(f"#param/data/{name}", name, "File", encodingFormat="application/gzip")
        self.parameter("#param/config", "the configuration", "File")
        inputs = list(self.params)
        outputs = [f"run/{name}" for name in RUN_FILES] + [f"tables/{n}" for n in TABLES]
        outputs += [f"tables/{n}" for n in PAGES] + [RUN_PAGE]
        outputs += [f"figures/{n}" for n in FIGURES] + PIPELINE
        outputs += [f"verify/run/{name}" for name in RUN_FILES]
        outputs += [f"verify/{name}" for name in VERIFY_FILES]
        for output in outputs:
            self.parameter(f"#param/{output}", f"results/{output}", "File")
        self.parameter("#param/verify/verdict", "the verdict on a rerun", "Text")
        self.workflow["input"] = [self.params[p] for p in inputs]
        self.workflow["output"] = [self.params[p] for p in self.params if p not in inputs]

    def add_tools(self, verified: bool) -> None:
        """A tool (the rule) and a step per rule that made results, with their parameters."""
        settings = [f"#param/train.{key}" for key in TRAIN_KEYS]
        data = [f"#param/data/{name}" for name in DATA_FILES]
        run = [f"#param/run/{name}" for name in RUN_FILES]
        tables = [f"#param/tables/{name}" for name in TABLES]
        tools = {
            "train_model_parallel": (settings + data, run),
            "plot_pipeline_timeline": (run[1::2], [f"#param/{p}" for p in PIPELINE]),
            "gather_tables": (run[:2], tables),
            "plot_training_curves": (tables[:2], [f"#param/figures/{n}" for n in FIGURES]),
            "render_report_pages": (
                [f"#param/tables/{name}" for name in CSV_TABLES],
                [f"#param/tables/{name}" for name in PAGES] + [f"#param/{RUN_PAGE}"],
            ),
        }
        if verified:
            rerun = [f"#param/verify/run/{name}" for name in RUN_FILES]
            verify = [f"#param/verify/{name}" for name in VERIFY_FILES]
            tools["verify_training"] = (settings + data, rerun)
            tools["compare_reproduction"] = (
                run[:3] + rerun[:3],
                verify + ["#param/verify/verdict"],
            )
        for position, (rule, (inputs, outputs)) in enumerate(tools.items()):
            script, what = STEPS[rule]
            defined_in = rule_file(self.repo, rule)
            tool = self.entity(
                f"{defined_in}#{rule}",
                "SoftwareApplication",
                name=f"rule {rule}",
                description=f"The Snakemake rule {rule} ({defined_in}): {what}, with {script}.",
                url=f"{defined_in}#{rule}",
                **({"version": self.commit} if self.commit else {}),
                hasPart=self.files[f"workflow/scripts/{script}"],
                input=[self.params[p] for p in inputs],
                output=[self.params[p] for p in outputs],
            )
            self.workflow.append_to("hasPart", tool)
            step = self.entity(
                f"#step/{rule}", "HowToStep", name=rule, position=str(position), workExample=tool
            )
            self.workflow.append_to("step", step)
            self.tools[rule] = tool

    # -------------------------------------------------------------------- actions

    def action(self, at_id: str, rule: str, name: str, objects, results, start, end, **extra):
        """A job's CreateAction, and the ControlAction that ties it to its step."""
        times = {"startTime": start} if start else {}
        times.update({"endTime": end} if end else {})
        action = self.crate.add_action(
            self.tools[rule],
            at_id,
            object=objects,
            result=results,
            properties={
                "@type": "CreateAction",
                "name": name,
                "description": f"A job of rule {rule}: {STEPS[rule][1]}.",
                "actionStatus": COMPLETED,
                **times,
                **extra,
            },
        )
        self.actions.append(action)
        self.controls.append(
            self.entity(
                f"#control/{at_id.lstrip('#')}",
                "ControlAction",
                name=f"Snakemake ran the job: {name}",
                instrument=self.crate.get(f"#step/{rule}"),
                object=action,
            )
        )
        return action

    def job_times(self, rel: str) -> tuple[str | None, str]:
        """When the job that wrote results/``rel`` started and ended, from Snakemake's record
        of that output; without one, only its end: the file's modification time."""
        path = (self.results / rel).as_posix()
        if self.snakemake_dir is not None:
            name = urlsafe_b64encode(path.encode()).decode()
            try:
                meta = json.loads((self.snakemake_dir / "metadata" / name).read_text())
                return iso(meta["starttime"]), iso(meta["endtime"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return None, iso(Path(path).stat().st_mtime)

    def step_job(self, rule: str, at_id: str, name: str, objects, rels: list[tuple[str, str]]):
        """The job of ``rule`` that wrote results/``rel`` for each (``rel``, its parameter)."""
        results = [self.result(rel, f"#param/{param}") for rel, param in rels]
        return self.action(at_id, rule, name, objects, results, *self.job_times(rels[0][0]))

    def data_inputs(self, run: Run) -> list:
        """The data files a run read, by name and MD5 (not included: they live outside
        results/), named by their download address when they came from a public mirror."""
        data = self.config.get("data", {})
        mirrors = [m for m in data.get("mirrors") or [] if re.match(r"https?://", str(m))]
        synthetic = data.get("synthetic")
        if synthetic is not None:
            settings = ", ".join(f"{key} {value}" for key, value in synthetic.items())
            origin = f"SYNTHETIC data in FashionMNIST's format, generated ({settings})"
        else:
            origin = "FashionMNIST" + (", from the config's mirrors" if mirrors else "")
        entities = []
        for name, md5 in sorted(run.record["setup"]["data_md5"].items()):
            url = f"{mirrors[0].rstrip('/')}/{name}" if synthetic is None and mirrors else None
            properties = {
                "name": name,
                "md5": md5,
                "encodingFormat": "application/gzip",
                "description": f"{origin}; checked by its MD5. Not included in this crate.",
            }
            if url is None:
                entity = self.entity(f"#data/{md5}/{name}", "File", **properties)
            else:  # a web-based data entity: part of the crate, fetched by no one here
                entity = self.crate.get(url) or self.crate.add_file(
                    url, properties={**properties, "contentUrl": url}
                )
            if f"#param/data/{name}" in self.params:
                link(entity, "exampleOfWork", self.params[f"#param/data/{name}"])
            entities.append(entity)
        return entities

    def settings(self, prefix: str, run: Run) -> list:
        """A run's training settings (run.json's params), each bound to its parameter."""
        params = run.record["params"]
        return [
            self.value(
                f"{prefix}/{key}", f"train.{key}", setting_value(params[key]), f"#param/train.{key}"
            )
            for key in TRAIN_KEYS
            if key in params
        ]

    def where(self, run: Run) -> dict:
        """A run's hosts (the action's location) and SLURM jobs (its identifiers)."""
        hosts, jobs = [], []
        for attempt in run.record["attempts"]:
            for host in [attempt["hostname"], *(r["hostname"] for r in attempt.get("ranks", []))]:
                hosts.append(self.entity(f"#host/{host}", "Place", name=host))
            slurm = attempt["slurm"]
            if slurm is not None:
                cluster = slurm.get("cluster")
                jobs.append(
                    self.entity(
                        f"#slurm-job/{cluster + '/' if cluster else ''}{slurm['job_id']}",
                        "PropertyValue",
                        name="SLURM job",
                        propertyID="SLURM_JOB_ID",
                        value=slurm["job_id"],
                        description=f"cluster {cluster}, partition {slurm['partition']}, "
                        f"node(s) {slurm['node']}",
                    )
                )
        hosts, jobs = (
            list({h.id: h for h in hosts}.values()),
            list({j.id: j for j in jobs}.values()),
        )
        return {"location": hosts[0] if len(hosts) == 1 else hosts, "identifier": jobs or None}

    def usage(self, run_id: str, rows: list[dict]) -> list:
        """A run's compute (its rows of compute.csv) as resourceUsage PropertyValues."""
        values = []
        for column, (code, unit, summed) in USAGE.items():
            cells = [float(r[column]) for r in rows if r.get(column) not in (None, "", "nan")]
            if cells:
                values.append(
                    self.entity(
                        f"#usage/{run_id}/{column}",
                        "PropertyValue",
                        name=column,
                        propertyID=column,
                        value=sum(cells) if summed else max(cells),
                        unitCode=code,
                        unitText=unit,
                    )
                )
        return values

    def training(self, run: Run, rule: str, folder: str, compute: list[dict]):
        """The CreateAction of the job that trained ``run`` (all its attempts)."""
        record, prefix = run.record, f"#{rule}/{run.run_id}"
        attempts, setup, last = record["attempts"], record["setup"], record["attempts"][-1]
        param = "run" if folder == "runs" else "verify/run"
        results = [
            self.result(f"{folder}/{run.run_id}/{name}", f"#param/{param}/{name}")
            for name in RUN_FILES
        ]
        for key, version in last["versions"].items():
            if version is not None:
                name, url = SOFTWARE.get(key, (key, None))
                software = self.entity(
                    f"#software/{key}/{version}",
                    "SoftwareApplication",
                    name=name,
                    version=str(version),
                    **({"url": url} if url else {}),
                )
                link(self.tools[rule], "softwareRequirements", software)
        commit = record["git"]["commit"]
        usage = self.usage(run.run_id, compute)
        where = {k: v for k, v in self.where(run).items() if v}
        action = self.action(
            prefix,
            rule,
            f"training of run {run.run_id}" if folder == "runs" else f"rerun of {run.run_id}",
            self.settings(prefix, run) + self.data_inputs(run),
            results,
            attempts[0]["started"],
            last.get("finished"),
            **where,
            **({"resourceUsage": usage} if usage else {}),
        )
        action["description"] = (
            f"{action['description'][:-1]}; {len(attempts)} attempt(s), stages on "
            f"{', '.join(setup['devices'])} ({', '.join(dict.fromkeys(last['device_names']))}), "
            f"{setup['threads']} thread(s) per process, code digest {record['git']['code_digest']}"
            + (f", git commit {commit}." if commit else ".")
        )
        return action

    def verification(self, runs: dict[str, Run]) -> list:
        """The reruns of ``snakemake verify`` and their comparison, each verdict a value."""
        rows = read_csv(self.results / "verify" / "reproduction.csv")
        for row in rows:
            rerun = read_run_dir(self.results / "verify" / row["run"])
            self.training(rerun, "verify_training", "verify", [])
        verdicts = [
            self.value(
                f"#verdict/{row['run']}",
                f"verdict on {row['run']}",
                row["verdict"],
                "#param/verify/verdict",
                description=row.get("notes") or row["verdict"],
            )
            for row in rows
        ]
        objects = []
        for row in rows:
            if row["run"] in runs:  # an original of this workflow's results/runs
                objects += [self.files[f"{RUNS_DIR}/{row['run']}/{n}"] for n in COMPARED]
            objects += [self.files[f"results/verify/{row['run']}/{n}"] for n in COMPARED]
        action = self.step_job(
            "compare_reproduction",
            "#compare_reproduction",
            "comparison of the reruns with their originals",
            objects,
            [(f"verify/{name}", f"verify/{name}") for name in VERIFY_FILES],
        )
        for verdict in verdicts:
            action.append_to("result", verdict)
        return verdicts

    # ---------------------------------------------------------------------- crate

    def build(self, runs: list[Run], staging: Path, snakemake_version: str | None) -> ROCrate:
        results = self.results
        verified = (results / "verify" / "reproduction.csv").is_file()
        self.add_workflow(snakemake_version)
        self.add_tools(verified)
        (staging / "used.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        config = self.file(
            staging / "used.yaml",
            USED_CONFIG,
            "#param/config",
            description="The configuration the results were made with: config/config.yaml "
            "merged with the options that results/config.json names.",
        )
        compute: dict[str, list[dict]] = {}
        for row in read_csv(results / "tables" / "compute.csv"):
            compute.setdefault(row["run_id"], []).append(row)
        for run in runs:
            self.training(run, "train_model_parallel", "runs", compute.get(run.run_id, []))
        for run in runs:
            folder = f"{RUNS_DIR}/{run.run_id}"
            self.step_job(
                "plot_pipeline_timeline",
                f"#plot_pipeline_timeline/{run.run_id}",
                f"pipeline figure of run {run.run_id}",
                [self.files[f"{folder}/{name}"] for name in (RECORD_FILE, TIMELINE_FILE)],
                [(p.format(run=run.run_id), p) for p in PIPELINE],
            )
        self.step_job(
            "gather_tables",
            "#gather_tables",
            "tables of every run and the compute statement",
            [self.files[f"{RUNS_DIR}/{r.run_id}/{n}"] for r in runs for n in RUN_FILES[:2]],
            [(f"tables/{name}", f"tables/{name}") for name in TABLES],
        )
        statement = (results / "tables" / "compute.md").read_text().split("\n\n")[0]
        self.files["results/tables/compute.md"]["description"] = plain(statement)
        self.step_job(
            "plot_training_curves",
            "#plot_training_curves",
            "training curves",
            [self.files[f"results/tables/{name}"] for name in TABLES[:2]],
            [(f"figures/{name}", f"figures/{name}") for name in FIGURES],
        )
        self.step_job(
            "render_report_pages",
            "#render_report_pages",
            "the report's tables and run pages",
            [self.files[f"results/tables/{name}"] for name in CSV_TABLES],
            [(f"tables/{name}", f"tables/{name}") for name in PAGES]
            + [(RUN_PAGE.format(run=run.run_id), RUN_PAGE) for run in runs],
        )
        verdicts = self.verification({run.run_id: run for run in runs}) if verified else []
        self.add_run_of_workflow(config, runs, verdicts)
        self.describe_root(runs, verified)
        return self.crate

    def add_run_of_workflow(self, config, runs: list[Run], verdicts: list) -> None:
        """The workflow's run (all its jobs) and Snakemake's orchestration of it."""
        starts = [a["startTime"] for a in self.actions if "startTime" in a]
        ends = [a["endTime"] for a in self.actions if "endTime" in a]
        times = {"startTime": min(starts), "endTime": max(ends)}
        data = {entity.id: entity for run in runs for entity in self.data_inputs(run)}
        self.run_of_workflow = self.crate.add_action(
            self.workflow,
            "#workflow-run",
            object=[config, *data.values()],
            result=[f for dest, f in self.files.items() if dest.startswith("results/")] + verdicts,
            properties={
                "@type": "CreateAction",
                "name": f"Run of the workflow: {len(runs)} run(s) and what was made from them",
                "description": "Every job that made the results, from the first training's "
                "start to the last job's end (Snakemake may have been started several times).",
                "actionStatus": COMPLETED,
                **times,
            },
        )
        self.crate.add_action(
            self.engine,
            "#snakemake-run",
            object=self.controls,
            result=self.run_of_workflow,
            properties={"@type": "OrganizeAction", "name": "Snakemake ran the workflow", **times},
        )

    def describe_root(self, runs: list[Run], verified: bool) -> None:
        crate = self.crate
        synthetic = self.config.get("data", {}).get("synthetic") is not None
        text = plain((self.results / "tables" / "overview.rst").read_text())
        text = text.replace("This report covers", "This crate describes", 1)
        if verified:
            text += " " + plain((self.results / "verify" / "verdict.rst").read_text())
        crate.name = (
            f"Model-parallel FashionMNIST: {len(runs)} run(s)"
            + (" on SYNTHETIC data" if synthetic else "")
            + (", verified" if verified else "")
        )
        crate.description = text
        crate.datePublished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        crate.license = crate.get(MIT)
        root = crate.root_dataset
        root["author"] = root["publisher"] = crate.get("#contributors")
        root["mentions"] = [self.run_of_workflow, *self.actions]
        for at_id, (name, version) in PROFILES.items():
            profile = self.entity(at_id, "CreativeWork", name=name, version=version)
            root.append_to("conformsTo", profile)


def write_crate(
    runs: list[Run],
    results: Path,
    repo: Path,
    config: dict,
    out_dir: Path,
    zip_path: Path,
    snakemake_version: str | None = None,
    snakemake_dir: Path | None = None,
) -> ROCrate:
    """Build the crate of ``runs`` and write it as the folder ``out_dir`` and as ``zip_path``
    (each complete or not there: written under another name, then renamed)."""
    with tempfile.TemporaryDirectory() as staging:
        crate = CrateBuilder(repo, results, config, snakemake_dir).build(
            runs, Path(staging), snakemake_version
        )
        partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        crate.write(partial)
        shutil.rmtree(out_dir, ignore_errors=True)
        partial.rename(out_dir)
        partial_zip = zip_path.with_name(zip_path.name + ".partial")
        crate.write_zip(partial_zip)
        partial_zip.rename(zip_path)
    return crate
