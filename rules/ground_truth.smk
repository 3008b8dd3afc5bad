rule measure_outputs:
    input:
        model=lambda w: checkpoint(w.pool, w.subset, w.seed),
        base=BASE_INPUT,
        stores=[set_store(s) for s in SETS],
    output:
        measurement=update(directory(MEASUREMENT)),
    log:
        LAYOUT.log("measure_outputs"),
    benchmark:
        LAYOUT.benchmark("measure_outputs")
    group:
        "measure"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        cfg={**model_params(config), "ground_truth": config["ground_truth"]},
        sets=SETS,
    script:
        "../workflow_scripts/measure_outputs.py"


rule gather_ground_truth:
    input:
        lambda w: [
            MEASUREMENT.format(pool=w.pool, subset=k, seed=s)
            for k, s in pool_models(w.pool)
        ],
    output:
        truth=update(directory(GROUND_TRUTH)),
        reliability=update(RELIABILITY),
    log:
        LAYOUT.log("gather_ground_truth"),
    benchmark:
        LAYOUT.benchmark("gather_ground_truth")
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        models=lambda w: pool_models(w.pool),
        sets=SETS,
    script:
        "../workflow_scripts/gather_ground_truth.py"
