rule measure_outputs:
    input:
        model=lambda w: checkpoint(w.pool, w.subset, w.seed),
        stores=[set_store(s) for s in SETS],
    output:
        measurement=directory(MEASUREMENT),
    params:
        cfg={**model_params(config), "ground_truth": config["ground_truth"]},
        sets=SETS,
    log:
        f"{OUT}/logs/measure_outputs/{{pool}}/{{subset}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/measure_outputs/{{pool}}/{{subset}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/measure_outputs.py"


rule gather_ground_truth:
    input:
        lambda w: [
            MEASUREMENT.format(pool=w.pool, subset=k, seed=s)
            for k, s in pool_models(w.pool)
        ],
    output:
        truth=directory(GROUND_TRUTH),
        reliability=RELIABILITY,
    params:
        models=lambda w: pool_models(w.pool),
        sets=SETS,
    log:
        f"{OUT}/logs/gather_ground_truth/{{pool}}.log",
    benchmark:
        f"{OUT}/benchmarks/gather_ground_truth/{{pool}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/gather_ground_truth.py"
