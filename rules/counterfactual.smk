rule counterfactual_train:
    input:
        unpack(cf_scores),
        data=DATA,
        base=BASE_INPUT,
    output:
        model=CF_MODEL,
        removed=CF_REMOVED,
        log_table=LAYOUT.cf_log,
    log:
        LAYOUT.log("counterfactual_train"),
    benchmark:
        LAYOUT.benchmark("counterfactual_train")
    group:
        "counterfactual"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=120,
    params:
        cfg={**model_params(config), "train": config["train"]},
        run=cf_run,
        resume_dir=lambda w: LAYOUT.cf_resume.format(**dict(w.items())),
    script:
        "../workflow_scripts/counterfactual_train.py"


rule counterfactual_evaluate:
    input:
        unpack(cf_runs),
        original=checkpoint("full", 0, config["generate"]["model_seed"]),
        generated=GENERATED,
        table=GENERATED_TABLE,
        base=BASE_INPUT,
    output:
        table=CF_EVAL,
    log:
        LAYOUT.log("counterfactual_evaluate"),
    benchmark:
        LAYOUT.benchmark("counterfactual_evaluate")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        cfg={
            **model_params(config),
            "generate": {
                k: v for k, v in config["generate"].items() if k != "model_seed"
            },
            "ground_truth": config["ground_truth"],
            "embedding": CF.get("embedding"),
        },
    script:
        "../workflow_scripts/counterfactual_evaluate.py"


rule counterfactual_table:
    input:
        tables=expand(CF_EVAL, cf_method=CF_METHODS),
    output:
        results=COUNTERFACTUAL,
        summary=report(
            COUNTERFACTUAL_SUMMARY,
            caption="../report/counterfactual_table.rst",
            category="3 Counterfactual",
            labels={"figure": "summary table"},
        ),
        markdown=COUNTERFACTUAL_MARKDOWN,
    log:
        LAYOUT.log("counterfactual_table"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=1000,
        runtime=10,
    params:
        bootstrap={
            "resamples": CF.get("bootstrap_resamples", 1000),
            "confidence": CF.get("confidence", 0.95),
            "seed": CF.get("seed", 0),
        },
    script:
        "../workflow_scripts/counterfactual_table.py"
