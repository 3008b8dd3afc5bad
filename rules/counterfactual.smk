rule counterfactual_train:
    input:
        unpack(plan.cf_scores),
        data=L.data,
        base=plan.base_input,
    output:
        model=L.cf_model,
        removed=L.cf_removed,
        log_table=L.cf_log,
    log:
        L.log("counterfactual_train"),
    benchmark:
        L.benchmark("counterfactual_train")
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
        cfg={**plan.model, "train": config["train"]},
        run=plan.cf_run,
        resume_dir=lambda w: L.cf_resume.format(**dict(w.items())),
    script:
        "../workflow_scripts/counterfactual_train.py"


rule counterfactual_evaluate:
    input:
        unpack(plan.cf_runs),
        original=plan.generator,
        generated=L.generated,
        table=L.generated_table,
        base=plan.base_input,
    output:
        table=L.cf_eval,
    log:
        L.log("counterfactual_evaluate"),
    benchmark:
        L.benchmark("counterfactual_evaluate")
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
            **plan.model,
            "generate": plan.generate,
            "ground_truth": plan.ground_truth,
            "embedding": plan.cf.get("embedding"),
        },
    script:
        "../workflow_scripts/counterfactual_evaluate.py"


rule counterfactual_table:
    input:
        tables=expand(L.cf_eval, cf_method=plan.cf_methods),
    output:
        results=L.counterfactual,
        summary=report(
            L.counterfactual_summary,
            caption="../report/counterfactual_table.rst",
            category="3 Counterfactual",
            labels={"figure": "summary table"},
        ),
        markdown=L.counterfactual_markdown,
    log:
        L.log("counterfactual_table"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=1000,
        runtime=10,
    params:
        bootstrap=plan.cf_bootstrap,
    script:
        "../workflow_scripts/counterfactual_table.py"
