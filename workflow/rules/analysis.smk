from fmnist.report.labels import figure_labels, run_labels

# Every run's pipeline timeline (rule plot_pipeline_timeline), for `rule all` to ask for.
PIPELINE_FIGURES = expand(
    "results/figures/pipeline/{run}.{ext}", run=RUNS, ext=["png", "pdf"]
)


localrules:
    gather_tables,
    render_report_pages,
    plot_training_curves,
    plot_pipeline_timeline,


rule gather_tables:
    input:
        epochs=run_outputs("epochs.csv"),
        provenance=run_outputs("run.json"),
    output:
        epochs=report(
            "results/tables/epochs.csv",
            caption="../report/epochs_table.rst",
            category="Tables",
            subcategory="Epochs",
        ),
        runs=report(
            "results/tables/runs.csv",
            caption="../report/runs_table.rst",
            category="Tables",
            subcategory="Runs",
        ),
        summary=report(
            "results/tables/summary.csv",
            caption="../report/summary_table.rst",
            category="Tables",
            subcategory="Summary",
        ),
        summary_md=report(
            "results/tables/summary.md",
            caption="../report/summary_table.rst",
            category="Tables",
            subcategory="Summary",
        ),
        summary_tex=report(
            "results/tables/summary.tex",
            caption="../report/summary_table.rst",
            category="Tables",
            subcategory="Summary",
        ),
        provenance=report(
            "results/tables/provenance.csv",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
        compute=report(
            "results/tables/compute.csv",
            caption="../report/compute_table.rst",
            category="Compute",
        ),
        compute_md=report(
            "results/tables/compute.md",
            caption="../report/compute_statement.rst",
            category="Compute",
        ),
        compute_tex=report(
            "results/tables/compute.tex",
            caption="../report/compute_statement.rst",
            category="Compute",
        ),
    log:
        "results/logs/gather_tables.log",
    benchmark:
        "results/benchmarks/gather_tables.tsv"
    conda:
        "../envs/python.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        script=script_path("gather.py"),
        out_dir=lambda wildcards, output: Path(output.epochs).parent,
        run_dirs=lambda wildcards, input: [Path(p).parent for p in input.provenance],
        # Read if there (local runs); on a cluster sacct says more (asked on the login node).
        benchmarks="results/benchmarks/train_model_parallel",
    shell:
        "python {params.script:q} --out {params.out_dir:q} --sacct auto"
        " --benchmarks {params.benchmarks:q} {params.run_dirs:q} > {log:q} 2>&1"


# The tables readable in the report itself, one page per run, the landing paragraph.
rule render_report_pages:
    input:
        tables=expand(
            "results/tables/{table}.csv",
            table=["epochs", "runs", "summary", "provenance", "compute"],
        ),
    output:
        summary_html=report(
            "results/tables/summary.html",
            caption="../report/summary_table.rst",
            category="Tables",
            subcategory="Summary",
        ),
        runs_html=report(
            "results/tables/runs.html",
            caption="../report/runs_table.rst",
            category="Tables",
            subcategory="Runs",
        ),
        compute_html=report(
            "results/tables/compute.html",
            caption="../report/compute_statement.rst",
            category="Compute",
        ),
        provenance_html=report(
            "results/tables/provenance.html",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
        # The landing page's paragraph (workflow/report/workflow.rst reads it).
        overview="results/tables/overview.rst",
        run_pages=report(
            directory("results/tables/run_pages"),
            patterns=["{run}.html"],
            caption="../report/run_page.rst",
            category="Runs",
            labels=lambda wildcards: run_labels(wildcards.run, RUNS, config["sweep"]),
        ),
    log:
        "results/logs/render_report_pages.log",
    benchmark:
        "results/benchmarks/render_report_pages.tsv"
    conda:
        "../envs/python.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        script=script_path("render_pages.py"),
        tables=lambda wildcards, input: Path(input.tables[0]).parent,
        out_dir=lambda wildcards, output: Path(output.overview).parent,
        synthetic="--synthetic-data" if config["data"]["synthetic"] is not None else "",
    shell:
        "python {params.script:q} --tables {params.tables:q} --out {params.out_dir:q}"
        " {params.synthetic} > {log:q} 2>&1"


rule plot_training_curves:
    input:
        epochs="results/tables/epochs.csv",
        runs="results/tables/runs.csv",
    output:
        # Both in the report: the image shows in any browser, the PDF is for the paper.
        loss_png=report(
            "results/figures/loss.png",
            caption="../report/loss.rst",
            category="Training curves",
            labels={"figure": "loss", "format": "image"},
        ),
        loss=report(
            "results/figures/loss.pdf",
            caption="../report/loss.rst",
            category="Training curves",
            labels={"figure": "loss", "format": "vector PDF"},
        ),
        accuracy_png=report(
            "results/figures/accuracy.png",
            caption="../report/accuracy.rst",
            category="Training curves",
            labels={"figure": "accuracy", "format": "image"},
        ),
        accuracy=report(
            "results/figures/accuracy.pdf",
            caption="../report/accuracy.rst",
            category="Training curves",
            labels={"figure": "accuracy", "format": "vector PDF"},
        ),
        throughput_png=report(
            "results/figures/throughput.png",
            caption="../report/throughput.rst",
            category="Training curves",
            labels={"figure": "throughput", "format": "image"},
        ),
        throughput=report(
            "results/figures/throughput.pdf",
            caption="../report/throughput.rst",
            category="Training curves",
            labels={"figure": "throughput", "format": "vector PDF"},
        ),
    log:
        "results/logs/plot_training_curves.log",
    benchmark:
        "results/benchmarks/plot_training_curves.tsv"
    conda:
        "../envs/python.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        script=script_path("plot.py"),
        out_dir=lambda wildcards, output: Path(output.loss).parent,
    shell:
        "python {params.script:q} --epochs {input.epochs:q} --runs {input.runs:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


# One figure per run, from the passes training timed in a few steps of epoch 1.
rule plot_pipeline_timeline:
    input:
        timeline="results/runs/{run}/timeline.csv",
        provenance="results/runs/{run}/run.json",
    output:
        # Listed by the run's swept parameters, as image and as PDF (for the paper).
        png=report(
            "results/figures/pipeline/{run}.png",
            caption="../report/pipeline.rst",
            category="Pipeline",
            labels=lambda wildcards: figure_labels(
                wildcards.run, RUNS, config["sweep"], "image"
            ),
        ),
        pdf=report(
            "results/figures/pipeline/{run}.pdf",
            caption="../report/pipeline.rst",
            category="Pipeline",
            labels=lambda wildcards: figure_labels(
                wildcards.run, RUNS, config["sweep"], "vector PDF"
            ),
        ),
    log:
        "results/logs/plot_pipeline_timeline/{run}.log",
    benchmark:
        "results/benchmarks/plot_pipeline_timeline/{run}.tsv"
    wildcard_constraints:
        # A run is one folder of results/runs.
        run="[^/]+",
    conda:
        "../envs/python.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        script=script_path("plot_timeline.py"),
    shell:
        "python {params.script:q} --timeline {input.timeline:q} --run-json {input.provenance:q}"
        " --png {output.png:q} --pdf {output.pdf:q} > {log:q} 2>&1"
