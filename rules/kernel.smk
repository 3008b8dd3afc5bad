rule gram_partial:
    input:
        shard=FEATURE_SHARD.replace("{split}", "train"),
    output:
        gram=directory(GRAM_PARTIAL),
    log:
        f"{OUT}/logs/gram_partial/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}/shard{{shard}}.log",
    benchmark:
        f"{OUT}/benchmarks/gram_partial/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}/shard{{shard}}.tsv"
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        spec_hash=lambda w: spec_hash(feature_spec_params(w)),
        rows=lambda w: shard_ranges_of(w.spec, "train")[int(w.shard)],
        n_train=SIZES["train"],
    script:
        "../workflow_scripts/gram_partial.py"


rule kernel:
    input:
        unpack(kernel_inputs),
    output:
        kernel=update(directory(KERNEL)),
    log:
        f"{OUT}/logs/kernel/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/kernel/{{spec}}/{{pool}}/{{subset}}/seed{{seed}}.tsv"
    group:
        "solve"
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        form=lambda w: kernel_form_of(w.spec),
    script:
        "../workflow_scripts/kernel.py"


rule select_lambda:
    input:
        kernel=lambda w: model_artifact(KERNEL, method_spec(w.method), w),
        train=lambda w: model_artifact(
            FEATURES, method_spec(w.method), w, split="train"
        ),
        queries=lambda w: [
            model_artifact(
                FEATURES, method_spec(w.method), w, split=query_split(w.method, s)
            )
            for s in method_sets(w.method)
        ],
        masks=[SUBSET_MASKS.format(pool=p) for p in ("select", LDS_POOL)],
        truths=[GROUND_TRUTH.format(pool=p) for p in ("select", LDS_POOL)],
        residuals=lambda w: (
            [RESIDUAL.format(**dict(w.items()))]
            if config["methods"][w.method].get("residual")
            else []
        ),
    output:
        curve=LAMBDA_CURVE,
    log:
        f"{OUT}/logs/select_lambda/{{method}}/{{pool}}/{{subset}}/seed{{seed}}.log",
    benchmark:
        SELECT_BENCHMARK
    group:
        "solve"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        grid=lambda w: config["methods"][w.method]["lambdas"],
        normalize=lambda w: config["methods"][w.method].get("normalize", "none"),
        sets=lambda w: method_sets(w.method),
        pools=["select", LDS_POOL],
    script:
        "../workflow_scripts/select_lambda.py"
