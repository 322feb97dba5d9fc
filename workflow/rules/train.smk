rule train_model_parallel:
    input:
        # Ancient: fetched again with the same sums retrains nothing (see data_manifest).
        manifest=ancient(data_manifest()),
    output:
        epochs="results/runs/{run}/epochs.csv",
        provenance="results/runs/{run}/run.json",
        model="results/runs/{run}/model.pt",
    log:
        # Snakemake clears it before each attempt; a resumed run reprints the epochs it had.
        "results/logs/train_model_parallel/{run}.log",
    benchmark:
        "results/benchmarks/train_model_parallel/{run}.tsv"
    conda:
        "../envs/pytorch.yaml"
    threads: TRAIN_RESOURCES["cpus_per_task"]
    resources:
        **train_scheduler_resources(),
    params:
        script=script_path("train.py"),
        data_dir=lambda wildcards, input: Path(input.manifest).parent,
        out_dir=lambda wildcards, output: Path(output.epochs).parent,
        options=train_arguments,
    shell:
        "python {params.script:q} --data-dir {params.data_dir:q} --md5-file {input.manifest:q}"
        " --out-dir {params.out_dir:q} {params.options} --threads {threads}"
        " --deadline-margin {resources.signal_seconds}"
        " --failure-requeues {resources.failure_retries}"
        " > {log} 2>&1"
