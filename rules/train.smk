if plan.base and not config["model"]["text_to_image"].get("pipeline_path"):

    rule pretrain_base:
        input:
            data=L.data,
        output:
            pipeline=directory(plan.base),
            log_table=L.pretrain_log,
        log:
            L.log("pretrain_base"),
        benchmark:
            L.benchmark("pretrain_base")
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            **GPU,
            **SLURM,
            mem_mb=4000,
            runtime=120,
        params:
            cfg=pretrain_params(config),
        script:
            "../workflow_scripts/pretrain_base.py"


rule train_model:
    input:
        data=L.data,
        base=plan.base_input,
    output:
        checkpoints=update(
            [fill(L.checkpoint, step=step) for step in plan.checkpoint_steps]
        ),
        log_table=update(L.train_log),
    log:
        L.log("train_model"),
    benchmark:
        L.benchmark("train_model")
    group:
        "train"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=120,
    params:
        cfg=lambda w: train_params(config, w.pool, w.subset),
        resume_dir=lambda w: L.train_resume.format(**dict(w.items())),
    script:
        "../workflow_scripts/train_model.py"
