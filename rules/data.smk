rule prepare_data:
    input:
        plan.data_inputs,
    output:
        store=directory(L.data),
        table=L.metadata,
    log:
        L.log("prepare_data"),
    benchmark:
        L.benchmark("prepare_data")
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
        data=L.data,
    output:
        masks=directory(L.subset_masks),
    log:
        L.log("make_subsets"),
    benchmark:
        L.benchmark("make_subsets")
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
