rule featurize:
    input:
        model=lambda w: checkpoint(w.pool, w.subset, w.seed, feature_step(w.spec)),
        base=BASE_INPUT,
        images=lambda w: set_store(w.split),
    output:
        shard=update(directory(FEATURE_SHARD)),
    log:
        f"{OUT}/logs/featurize/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}/{{split}}/shard{{shard}}.log",
    benchmark:
        f"{OUT}/benchmarks/featurize/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}/{{split}}/shard{{shard}}.tsv"
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
        f"{OUT}/logs/gather_features/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}/{{split}}.log",
    benchmark:
        f"{OUT}/benchmarks/gather_features/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}/{{split}}.tsv"
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
