rule prepare_data:
    input:
        data_inputs(),
    output:
        store=directory(DATA),
        table=METADATA,
    params:
        data=config["data"],
    log:
        f"{OUT}/logs/prepare_data.log",
    benchmark:
        f"{OUT}/benchmarks/prepare_data.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/prepare_data.py"


rule make_subsets:
    input:
        data=DATA,
    output:
        masks=directory(SUBSET_MASKS),
    params:
        pool=lambda w: pool_params(config, w.pool),
    log:
        f"{OUT}/logs/make_subsets/{{pool}}.log",
    benchmark:
        f"{OUT}/benchmarks/make_subsets/{{pool}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/make_subsets.py"
