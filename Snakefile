from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/rocrate.smk"


rule all:
    input:
        # The data too: a deleted file is fetched again before any run needs it.
        data_files(),
        run_outputs("epochs.csv"),
        run_outputs("run.json"),
        run_outputs("model.pt"),
        "results/tables/summary.csv",
        "results/tables/provenance.csv",
        "results/figures/loss.pdf",
        "results/figures/accuracy.pdf",
        "results/figures/throughput.pdf",
        "results/tables/summary.html",
        # The pipeline of each run, drawn from its timeline.csv.
        PIPELINE_FIGURES,
        # Once `snakemake verify` has run, kept up to date and shown in the report.
        VERIFY.kept_up_to_date(VERIFY_OUTPUTS),
        # Which configuration results/ holds; the report refuses to show it under another.
        results_config.RESULTS_CONFIG,
        refuse_other_results_when_shown,
