# `snakemake benchmark`: how fast training runs here (or, with --profile profiles/slurm, on
# the cluster's nodes). Its code lives in workflow/scripts/bench/, outside the workflow's
# library; never part of `rule all`. See workflow/scripts/bench/README.md.
BENCHMARK = config["benchmark"]
BENCHMARK_RESOURCES = config["resources"]["benchmark"]


localrules:
    benchmark,
    benchmark_summary,


# The training step: the tutorial's loop, the workflow's epoch, compute floors.
rule benchmark_step:
    output:
        "results/benchmark/step.json",
    log:
        "results/logs/benchmark/step.log",
    conda:
        "../envs/pytorch.yaml"
    threads: max(BENCHMARK["threads"])
    resources:
        gpu=BENCHMARK_RESOURCES["gpu"],
        cpus_per_task=BENCHMARK_RESOURCES["cpus_per_task"],
        mem_mb=BENCHMARK_RESOURCES["mem_mb"],
        runtime=BENCHMARK_RESOURCES["runtime"],
    params:
        script=script_path("benchmark.py"),
        devices=BENCHMARK["devices"],
        threads=BENCHMARK["threads"],
        repetitions=BENCHMARK["repetitions"],
        train_size=BENCHMARK["train_size"],
    shell:
        "python {params.script:q} --devices {params.devices:q} --threads {params.threads:q}"
        " --repetitions {params.repetitions:q} --train-size {params.train_size:q}"
        " --out {output:q} > {log:q} 2>&1"


# The distributed engine against the single-process engine (two stages, two processes).
rule benchmark_pipeline:
    output:
        "results/benchmark/pipeline.json",
    log:
        "results/logs/benchmark/pipeline.log",
    conda:
        "../envs/pytorch.yaml"
    threads: 2
    resources:
        cpus_per_task=BENCHMARK_RESOURCES["cpus_per_task"],
        mem_mb=BENCHMARK_RESOURCES["mem_mb"],
        runtime=BENCHMARK_RESOURCES["runtime"],
    params:
        script=script_path("benchmark_pipeline.py"),
        models=BENCHMARK["pipeline_models"],
        repetitions=BENCHMARK["repetitions"],
    shell:
        "python {params.script:q} --models {params.models:q} --repetitions {params.repetitions:q}"
        " --out {output:q} > {log:q} 2>&1"


# Peak memory per process: each engine, 2 and 3 stages, and a model over a per-process limit.
rule benchmark_memory:
    output:
        "results/benchmark/memory.json",
    log:
        "results/logs/benchmark/memory.log",
    conda:
        "../envs/pytorch.yaml"
    threads: 2
    resources:
        cpus_per_task=BENCHMARK_RESOURCES["cpus_per_task"],
        mem_mb=BENCHMARK_RESOURCES["mem_mb"],
        runtime=BENCHMARK_RESOURCES["runtime"],
    params:
        script=script_path("benchmark_memory.py"),
    shell:
        "python {params.script:q} --out {output:q} > {log:q} 2>&1"


rule benchmark_summary:
    input:
        step="results/benchmark/step.json",
        pipeline="results/benchmark/pipeline.json",
    output:
        tables="results/benchmark/tables.md",
        step_png="results/benchmark/step.png",
        pipeline_png="results/benchmark/pipeline.png",
    log:
        "results/logs/benchmark/summary.log",
    conda:
        "../envs/python.yaml"
    params:
        script=script_path("benchmark_summary.py"),
    shell:
        "python {params.script:q} --step {input.step:q} --pipeline {input.pipeline:q}"
        " --markdown {output.tables:q} --step-figure {output.step_png:q}"
        " --pipeline-figure {output.pipeline_png:q} > {log:q} 2>&1"


# The target: the benchmarks, their tables and figures.
rule benchmark:
    input:
        rules.benchmark_summary.output,
        rules.benchmark_memory.output,
