rule generate:
    input:
        model=checkpoint("full", 0, config["generate"]["model_seed"]),
        base=BASE_INPUT,
    output:
        store=directory(GENERATED),
        table=GENERATED_TABLE,
    log:
        LAYOUT.log("generate"),
    benchmark:
        LAYOUT.benchmark("generate")
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


rule trajectory:
    input:
        model=checkpoint("full", 0, config["generate"]["model_seed"]),
        generated=GENERATED,
    output:
        trajectory=directory(TRAJECTORY),
    log:
        LAYOUT.log("trajectory"),
    benchmark:
        LAYOUT.benchmark("trajectory")
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
        "../workflow_scripts/trajectory.py"
