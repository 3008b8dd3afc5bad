rule measure_outputs:
    input:
        models=plan.part_checkpoints,
        base=plan.base_input,
        stores=[plan.set_store(s) for s in plan.sets],
    output:
        part=update(directory(L.measurement_part)),
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
        cfg={**plan.model, "ground_truth": plan.ground_truth},
        sets=plan.sets,
        models=lambda w: plan.part_models(w.pool, w.part),
        outputs=plan.part_measurements,
    script:
        "../workflow_scripts/measure_outputs.py"


rule gather_ground_truth:
    input:
        plan.pool_parts,
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
        measurements=plan.pool_measurements,
        sets=plan.sets,
    script:
        "../workflow_scripts/gather_ground_truth.py"
