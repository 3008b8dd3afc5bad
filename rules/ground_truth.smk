rule measure_outputs:
    input:
        model=lambda w: plan.checkpoint(w.pool, w.subset, w.seed),
        base=plan.base_input,
        stores=[plan.set_store(s) for s in plan.sets],
    output:
        measurement=update(directory(L.measurement)),
    log:
        L.log("measure_outputs"),
    benchmark:
        L.benchmark("measure_outputs")
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
        cfg={**plan.model, "ground_truth": config["ground_truth"]},
        sets=plan.sets,
    script:
        "../workflow_scripts/measure_outputs.py"


rule gather_ground_truth:
    input:
        lambda w: [
            L.measurement.format(pool=w.pool, subset=k, seed=s)
            for k, s in plan.pool_models(w.pool)
        ],
    output:
        truth=update(directory(L.ground_truth)),
        reliability=update(L.reliability),
    log:
        L.log("gather_ground_truth"),
    benchmark:
        L.benchmark("gather_ground_truth")
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        models=lambda w: plan.pool_models(w.pool),
        sets=plan.sets,
    script:
        "../workflow_scripts/gather_ground_truth.py"
