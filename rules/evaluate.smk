rule evaluate_lds:
    input:
        scores=lambda w: [
            SCORES.format(method=w.method, set=s) for s in method_sets(w.method)
        ],
        masks=SUBSET_MASKS.format(pool=LDS_POOL),
        truth=GROUND_TRUTH.format(pool=LDS_POOL),
    output:
        table=METHOD_LDS,
    log:
        LAYOUT.log("evaluate_lds"),
    benchmark:
        LAYOUT.benchmark("evaluate_lds")
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        lds={k: v for k, v in config["evaluation"]["lds"].items() if k != "pool"},
        sets=lambda w: method_sets(w.method),
    script:
        "../workflow_scripts/evaluate_lds.py"


rule trajectory_lds:
    input:
        scores=STEP_SCORES,
        masks=SUBSET_MASKS.format(pool=LDS_POOL),
        truth=GROUND_TRUTH.format(pool=LDS_POOL),
    output:
        table=STEP_LDS,
    log:
        LAYOUT.log("trajectory_lds"),
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
        tables=expand(METHOD_LDS, method=METHODS),
        reliability=RELIABILITY.format(pool=LDS_POOL),
        oracle=[
            ORACLE_CURVE.format(
                method=m, **dict(zip(("pool", "subset", "seed"), models[0]))
            )
            for m, models in ORACLE_MODELS.items()
        ],
    output:
        csv=report(
            LDS_TABLE,
            caption="../report/lds_table.rst",
            category="1 LDS",
            labels={"figure": "LDS table"},
        ),
        markdown=LDS_MARKDOWN,
    log:
        LAYOUT.log("lds_table"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=1000,
        runtime=10,
    params:
        oracle_methods=list(ORACLE_MODELS),
    script:
        "../workflow_scripts/lds_table.py"


rule retraining_curve:
    input:
        masks=SUBSET_MASKS.format(pool="retrain"),
        truth=GROUND_TRUTH.format(pool="retrain"),
        eval_masks=SUBSET_MASKS.format(pool=LDS_POOL),
        eval_truth=GROUND_TRUTH.format(pool=LDS_POOL),
    output:
        table=RETRAINING_CURVE,
    log:
        LAYOUT.log("retraining_curve"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        method=lambda w: config["methods"][w.method],
        sets=SETS,
        lds=config["evaluation"]["lds"],
    script:
        "../workflow_scripts/retraining_curve.py"


rule sweep_table:
    input:
        tables=lambda w: [
            METHOD_LDS.format(method=p["method"]) for p in SWEEPS[w.sweep]
        ],
    output:
        table=report(
            SWEEP_TABLE,
            caption="../report/sweep_table.rst",
            category="7 Sweeps",
            subcategory="{sweep}",
            labels={"figure": "table"},
        ),
    log:
        LAYOUT.log("sweep_table"),
    conda:
        "../envs/eval.yaml"
    params:
        key=lambda w: config["sweeps"][w.sweep]["key"],
        points=lambda w: [(p["value"], p["method"]) for p in SWEEPS[w.sweep]],
    script:
        "../workflow_scripts/sweep_table.py"
