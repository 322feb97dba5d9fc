localrules:
    gather_epoch_logs,
    plot_loss_curves,


rule gather_epoch_logs:
    input:
        epochs=run_outputs("epochs.csv"),
        provenance=run_outputs("run.json"),
    output:
        epochs=report(
            "results/tables/epochs.csv",
            caption="../report/epochs_table.rst",
            category="Tables",
        ),
        runs=report(
            "results/tables/runs.csv",
            caption="../report/runs_table.rst",
            category="Tables",
        ),
        summary=report(
            "results/tables/summary.csv",
            caption="../report/summary_table.rst",
            category="Tables",
        ),
        summary_md="results/tables/summary.md",
        summary_tex="results/tables/summary.tex",
        provenance=report(
            "results/tables/provenance.csv",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        "results/logs/gather_epoch_logs.log",
    benchmark:
        "results/benchmarks/gather_epoch_logs.tsv"
    conda:
        "../envs/python.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        script=script_path("gather.py"),
        out_dir=lambda wildcards, output: Path(output.epochs).parent,
        run_dirs=lambda wildcards, input: [Path(p).parent for p in input.provenance],
    shell:
        "python {params.script:q} --out {params.out_dir:q} {params.run_dirs:q} > {log} 2>&1"


rule plot_loss_curves:
    input:
        epochs="results/tables/epochs.csv",
        runs="results/tables/runs.csv",
    output:
        loss_png="results/figures/loss.png",
        loss=report(
            "results/figures/loss.pdf",
            caption="../report/loss.rst",
            category="Training curves",
        ),
        accuracy_png="results/figures/accuracy.png",
        accuracy=report(
            "results/figures/accuracy.pdf",
            caption="../report/accuracy.rst",
            category="Training curves",
        ),
        throughput_png="results/figures/throughput.png",
        throughput=report(
            "results/figures/throughput.pdf",
            caption="../report/throughput.rst",
            category="Training curves",
        ),
    log:
        "results/logs/plot_loss_curves.log",
    benchmark:
        "results/benchmarks/plot_loss_curves.tsv"
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
        " --out-dir {params.out_dir:q} > {log} 2>&1"
