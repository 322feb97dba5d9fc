# `snakemake verify`: rerun chosen runs from scratch and compare them with the originals,
# byte for byte (config verify:, fmnist/verify/plan.py and fmnist/verify/compare.py).
from fmnist.rundir.files import atomic_write_text
from fmnist.verify.plan import REPRODUCTION, VerifyPlan

VERIFY = VerifyPlan(
    config["verify"]["runs"], config["verify"]["source"], RUNS, sorted(config["sweep"])
)
VERIFY_OUTPUTS = [REPRODUCTION, "results/verify/reproduction.html"]


localrules:
    compare_reproduction,
    verify,
    record_results_config,


# The training rule itself, its resources and command (a SLURM job like any other), with
# the original's recorded settings, into results/verify/{run}; the original is not touched.
use rule train_model_parallel as verify_training with:
    output:
        epochs="results/verify/{run}/epochs.csv",
        provenance="results/verify/{run}/run.json",
        model="results/verify/{run}/model.pt",
    log:
        "results/logs/verify_training/{run}.log",
    benchmark:
        "results/benchmarks/verify_training/{run}.tsv"
    # The original's thread count (run.json): it shapes how CPU matmuls sum.
    threads: train_threads(verify_params, verify_threads)
    resources:
        **train_scheduler_resources(verify_params, verify_threads),
    params:
        options=planned(lambda wildcards: VERIFY.options(wildcards.run)),
        process_threads=process_threads(verify_params, verify_threads),
        launch=launch_arguments(verify_params),


# Imports torch, to read model.pt (every tensor is compared byte for byte).
rule compare_reproduction:
    input:
        original=planned(lambda wildcards: VERIFY.original_files()),
        rerun=planned(lambda wildcards: VERIFY.rerun_files()),
    output:
        table=report(
            REPRODUCTION,
            caption="../report/reproduction.rst",
            category="Reproduction",
        ),
        page=report(
            "results/verify/reproduction.html",
            caption="../report/reproduction.rst",
            category="Reproduction",
        ),
        # The landing page's sentence (workflow/report/workflow.rst reads it).
        verdict="results/verify/verdict.rst",
    log:
        "results/logs/compare_reproduction.log",
    benchmark:
        "results/benchmarks/compare_reproduction.tsv"
    conda:
        "../envs/pytorch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        script=script_path("verify.py"),
        pairs=planned(lambda wildcards: VERIFY.pairs()),
        out_dir=lambda wildcards, output: Path(output.table).parent,
        accept=(
            "--accept-unverifiable" if config["verify"]["accept_unverifiable"] else ""
        ),
    shell:
        "python {params.script:q} compare {params.pairs} --out-dir {params.out_dir:q}"
        " {params.accept} > {log:q} 2>&1"


# The target: fails (non-zero exit) when a run was not confirmed, naming it.
rule verify:
    input:
        planned(verify_inputs),
    log:
        "results/logs/verify.log",
    conda:
        "../envs/python.yaml"
    params:
        script=script_path("verify.py"),
    shell:
        "python {params.script:q} check {input:q} 2>&1 | tee {log:q}"


# Which configuration results/ holds (fmnist/verify/results_config.py): written by the
# default target once the runs are gathered, rewritten when that configuration changes.
rule record_results_config:
    input:
        "results/tables/runs.csv",
    output:
        results_config.RESULTS_CONFIG,
    log:
        "results/logs/record_results_config.log",
    params:
        # Not the options: equivalent ones (another overlay, same results) rerun nothing.
        fingerprint=RESULTS_FINGERPRINT,
    run:
        atomic_write_text(
            Path(output[0]),
            results_config.stamp_text(params.fingerprint, CONFIG_OPTIONS),
        )
