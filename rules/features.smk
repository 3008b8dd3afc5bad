rule featurize:
    input:
        model=lambda w: plan.checkpoint(
            w.pool, w.subset, w.seed, plan.feature_step(w.spec)
        ),
        base=plan.base_input,
        images=lambda w: plan.set_store(w.split),
    output:
        shard=update(directory(L.feature_shard)),
    log:
        L.log("featurize"),
    benchmark:
        L.benchmark("featurize")
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
        spec=plan.feature_spec,
        model=plan.model,
        rows=lambda w: plan.shard_ranges(w.spec, w.split)[int(w.shard)],
    script:
        "../workflow_scripts/featurize.py"


rule gather_features:
    input:
        shards=plan.feature_shards,
    output:
        features=update(directory(L.features)),
    log:
        L.log("gather_features"),
    benchmark:
        L.benchmark("gather_features")
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        spec_hash=lambda w: spec_hash(plan.feature_spec(w)),
        ranges=lambda w: plan.shard_ranges(w.spec, w.split),
    script:
        "../workflow_scripts/gather_features.py"
