# `snakemake rocrate`: the results as a Workflow Run RO-Crate (Provenance Run Crate 0.5 on
# RO-Crate 1.1): results/ro-crate/ and results/ro-crate.zip (fmnist/report/rocrate.py).
# Never part of `rule all`: it copies every model.pt. It brings the tables, figures and
# (once `snakemake verify` has run) the verification up to date first.
from snakemake import __version__ as SNAKEMAKE_VERSION

ROCRATE = "results/ro-crate"
# The repository's files the crate holds besides workflow/, config/ and profiles/.
ROCRATE_REPOSITORY_FILES = [
    os.path.relpath(Path(workflow.basedir, name))
    for name in (
        "Snakefile",
        "LICENSE",
        "CITATION.cff",
        "README.md",
        "requirements.txt",
    )
]


localrules:
    rocrate,


# The target: `snakemake rocrate` (with the run's --configfile, as for the report).
rule rocrate:
    input:
        # Only this configuration's results are described (results/config.json).
        refuse_other_results("describe the results in an RO-Crate"),
        results_config.RESULTS_CONFIG,
        repository=ROCRATE_REPOSITORY_FILES,
        runs=expand(
            "results/runs/{run}/{file}",
            run=RUNS,
            file=["epochs.csv", "run.json", "model.pt", "timeline.csv"],
        ),
        tables=expand(
            "results/tables/{table}",
            table=[
                "epochs.csv",
                "runs.csv",
                "summary.csv",
                "summary.md",
                "summary.tex",
                "provenance.csv",
                "compute.csv",
                "compute.md",
                "compute.tex",
                "summary.html",
                "runs.html",
                "compute.html",
                "provenance.html",
                "overview.rst",
            ],
        ),
        run_pages="results/tables/run_pages",
        figures=expand(
            "results/figures/{name}.{ext}",
            name=["loss", "accuracy", "throughput"],
            ext=["png", "pdf"],
        ),
        pipeline=PIPELINE_FIGURES,
        # The verification's files once `snakemake verify` has made one.
        verification=planned(
            lambda wildcards: (
                [*VERIFY_OUTPUTS, "results/verify/verdict.rst", *VERIFY.rerun_files()]
                if VERIFY.kept_up_to_date(VERIFY_OUTPUTS)
                else []
            )
        ),
    output:
        crate=directory(ROCRATE),
        zip=f"{ROCRATE}.zip",
    log:
        "results/logs/rocrate.log",
    conda:
        "../envs/rocrate.yaml"
    params:
        script=script_path("make_rocrate.py"),
        run_dirs=expand("results/runs/{run}", run=RUNS),
        repo=os.path.relpath(workflow.basedir),
        # The configuration as Snakemake merged it (config/config.yaml and every overlay).
        config_json=json.dumps(config, sort_keys=True),
        snakemake_version=SNAKEMAKE_VERSION,
    shell:
        "python {params.script:q} {params.run_dirs:q} --results results --repo {params.repo:q}"
        " --config-json {params.config_json:q} --snakemake-version {params.snakemake_version:q}"
        " --snakemake-dir .snakemake --out {output.crate:q} --zip {output.zip:q} > {log:q} 2>&1"
