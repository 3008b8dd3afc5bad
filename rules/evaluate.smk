rule evaluate_lds:
    input:
        scores=lambda w: [
            L.scores.format(method=w.method, set=s) for s in plan.method_sets(w.method)
        ],
        masks=L.subset_masks.format(pool=plan.lds_pool),
        truth=L.ground_truth.format(pool=plan.lds_pool),
        reference=lambda w: [
            L.scores.format(method=plan.lds_reference, set=s)
            for s in plan.reference_sets(w.method)
        ],
    output:
        table=L.method_lds,
    log:
        L.log("evaluate_lds"),
    benchmark:
        L.benchmark("evaluate_lds")
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        lds={k: v for k, v in config["evaluation"]["lds"].items() if k != "pool"},
        sets=lambda w: plan.method_sets(w.method),
        reference_sets=lambda w: plan.reference_sets(w.method),
    script:
        "../workflow_scripts/evaluate_lds.py"


rule trajectory_lds:
    input:
        scores=L.step_scores,
        masks=L.subset_masks.format(pool=plan.lds_pool),
        truth=L.ground_truth.format(pool=plan.lds_pool),
    output:
        table=L.step_lds,
    log:
        L.log("trajectory_lds"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        lds={k: v for k, v in config["evaluation"]["lds"].items() if k != "pool"},
    script:
        "../workflow_scripts/trajectory_lds.py"


rule lds_table:
    input:
        tables=expand(L.method_lds, method=plan.methods),
        reliability=L.reliability.format(pool=plan.lds_pool),
        oracle=[
            L.oracle_curve.format(
                method=m, **dict(zip(("pool", "subset", "seed"), models[0]))
            )
            for m, models in plan.oracle_models.items()
        ],
    output:
        csv=report(
            L.lds_table,
            caption="../report/lds_table.rst",
            category="1 LDS",
            labels={"figure": "LDS table"},
        ),
        markdown=L.lds_markdown,
    log:
        L.log("lds_table"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=1000,
        runtime=10,
    params:
        oracle_methods=list(plan.oracle_models),
    script:
        "../workflow_scripts/lds_table.py"


rule retraining_curve:
    input:
        masks=L.subset_masks.format(pool="retrain"),
        truth=L.ground_truth.format(pool="retrain"),
        eval_masks=L.subset_masks.format(pool=plan.lds_pool),
        eval_truth=L.ground_truth.format(pool=plan.lds_pool),
    output:
        table=L.retraining_curve,
    log:
        L.log("retraining_curve"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        method=lambda w: plan.method(w.method),
        sets=plan.sets,
        lds=config["evaluation"]["lds"],
    script:
        "../workflow_scripts/retraining_curve.py"


rule sweep_table:
    input:
        tables=lambda w: [
            L.method_lds.format(method=m) for _, m in plan.sweep_rows(w.sweep)
        ],
    output:
        table=report(
            L.sweep_table,
            caption="../report/sweep_table.rst",
            category="7 Sweeps",
            subcategory="{sweep}",
            labels={"figure": "table"},
        ),
    log:
        L.log("sweep_table"),
    conda:
        "../envs/eval.yaml"
    params:
        key=lambda w: plan.sweep_key(w.sweep),
        points=lambda w: plan.sweep_rows(w.sweep),
    script:
        "../workflow_scripts/sweep_table.py"
