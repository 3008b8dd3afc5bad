rule prepare_data:
    input:
        data_inputs(),
    output:
        store=directory(DATA),
        table=METADATA,
    log:
        LAYOUT.log("prepare_data"),
    benchmark:
        LAYOUT.benchmark("prepare_data")
    conda:
        "../envs/data.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        data=config["data"],
    script:
        "../workflow_scripts/prepare_data.py"


rule make_subsets:
    input:
        data=DATA,
    output:
        masks=directory(SUBSET_MASKS),
    log:
        LAYOUT.log("make_subsets"),
    benchmark:
        LAYOUT.benchmark("make_subsets")
    conda:
        "../envs/data.yaml"
    resources:
        **SLURM,
        mem_mb=2000,
        runtime=10,
    params:
        pool=lambda w: pool_params(config, w.pool),
    script:
        "../workflow_scripts/make_subsets.py"
