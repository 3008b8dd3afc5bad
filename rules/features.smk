rule featurize:
    input:
        model=lambda w: checkpoint(w.pool, w.subset, w.seed, feature_step(w.spec)),
        base=BASE_INPUT,
        images=lambda w: set_store(w.split),
    output:
        shard=update(directory(FEATURE_SHARD)),
    log:
        LAYOUT.log("featurize"),
    benchmark:
        LAYOUT.benchmark("featurize")
    group:
        "featurize"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=6000,
        runtime=120,
    params:
        spec=feature_spec_params,
        model=model_params(config),
        rows=lambda w: shard_ranges_of(w.spec, w.split)[int(w.shard)],
    script:
        "../workflow_scripts/featurize.py"


rule gather_features:
    input:
        shards=lambda w: [
            FEATURE_SHARD.format(**dict(w.items()), shard=i)
            for i in range(len(shard_ranges_of(w.spec, w.split)))
        ],
    output:
        features=update(directory(FEATURES)),
    log:
        LAYOUT.log("gather_features"),
    benchmark:
        LAYOUT.benchmark("gather_features")
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        spec_hash=lambda w: spec_hash(feature_spec_params(w)),
        ranges=lambda w: shard_ranges_of(w.spec, w.split),
    script:
        "../workflow_scripts/gather_features.py"
