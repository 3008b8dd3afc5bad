rule generate:
    input:
        model=checkpoint("full", 0, config["generate"]["model_seed"]),
    output:
        store=directory(GENERATED),
        table=GENERATED_TABLE,
    log:
        f"{OUT}/logs/generate.log",
    benchmark:
        f"{OUT}/benchmarks/generate.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        cfg={
            **model_params(config),
            "generate": {
                k: v for k, v in config["generate"].items() if k != "model_seed"
            },
        },
    script:
        "../workflow_scripts/generate.py"
