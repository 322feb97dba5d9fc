localrules:
    make_synthetic_fashion_mnist,
    download_fashion_mnist,


# Only used when data.synthetic is set (offline demo and tests).
rule make_synthetic_fashion_mnist:
    output:
        files=expand(
            "{mirror}/{name}",
            mirror=SYNTHETIC_MIRROR,
            name=idx.FILE_NAMES + ["MD5SUMS"],
        ),
    log:
        "results/logs/make_synthetic_fashion_mnist.log",
    benchmark:
        "results/benchmarks/make_synthetic_fashion_mnist.tsv"
    conda:
        "../envs/python.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        script=script_path("make_synthetic_fashion_mnist.py"),
        out_dir=lambda wildcards, output: Path(output.files[0]).parent,
        # One value each: a mapping would rerun the rule when its keys come in another order.
        train_size=lambda wildcards: config["data"]["synthetic"]["train_size"],
        test_size=lambda wildcards: config["data"]["synthetic"]["test_size"],
        seed=lambda wildcards: config["data"]["synthetic"]["seed"],
    shell:
        "python {params.script:q} --out-dir {params.out_dir:q}"
        " --train-size {params.train_size:q} --test-size {params.test_size:q}"
        " --seed {params.seed:q} > {log:q} 2>&1"


# A local rule: on a cluster it runs on the login node, which has internet.
rule download_fashion_mnist:
    input:
        mirror=synthetic_mirror_files(),
    output:
        files=data_files(),
        manifest=data_manifest(),
    log:
        "results/logs/download_fashion_mnist.log",
    benchmark:
        "results/benchmarks/download_fashion_mnist.tsv"
    conda:
        "../envs/python.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        script=script_path("download_fashion_mnist.py"),
        dest=lambda wildcards, output: Path(output.manifest).parent,
        sources=download_arguments,
    shell:
        "python {params.script:q} --dest {params.dest:q} --manifest {output.manifest:q}"
        " {params.sources} > {log:q} 2>&1"
