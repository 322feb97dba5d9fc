rule train_model_parallel:
    input:
        # Ancient: fetched again with the same sums retrains nothing (see data_manifest).
        manifest=ancient(data_manifest()),
    output:
        epochs="results/runs/{run}/epochs.csv",
        provenance="results/runs/{run}/run.json",
        model="results/runs/{run}/model.pt",
        timeline="results/runs/{run}/timeline.csv",
    log:
        # Snakemake clears it before each attempt; a resumed run reprints the epochs it had.
        "results/logs/train_model_parallel/{run}.log",
    benchmark:
        "results/benchmarks/train_model_parallel/{run}.tsv"
    conda:
        "../envs/pytorch.yaml"
    threads: train_threads(run_params)
    resources:
        **train_scheduler_resources(run_params),
    # Every word quoted: {params.options} and {params.launch} are shlex.join'ed already.
    params:
        script=script_path("train.py"),
        data_dir=lambda wildcards, input: Path(input.manifest).parent,
        out_dir=lambda wildcards, output: Path(output.epochs).parent,
        options=train_arguments,
        process_threads=process_threads(run_params),
        launch=launch_arguments(run_params),
    shell:
        "python {params.script:q} --data-dir {params.data_dir:q} --md5-file {input.manifest:q}"
        " --out-dir {params.out_dir:q} {params.options} --threads {params.process_threads:q}"
        " {params.launch}"
        " --signal-seconds {resources.signal_seconds:q}"
        " --failure-requeues {resources.failure_retries:q}"
        " > {log:q} 2>&1"
