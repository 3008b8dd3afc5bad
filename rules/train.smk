if BASE and not config["model"]["text_to_image"].get("pipeline_path"):

    rule pretrain_base:
        input:
            data=DATA,
        output:
            pipeline=directory(BASE),
            log_table=PRETRAIN_LOG,
        log:
            LAYOUT.log("pretrain_base"),
        benchmark:
            LAYOUT.benchmark("pretrain_base")
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
        data=DATA,
        base=BASE_INPUT,
    output:
        checkpoints=update([fill(CHECKPOINT, step=step) for step in CKPT_STEPS]),
        log_table=update(LAYOUT.train_log),
    log:
        LAYOUT.log("train_model"),
    benchmark:
        LAYOUT.benchmark("train_model")
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
        resume_dir=lambda w: LAYOUT.train_resume.format(**dict(w.items())),
    script:
        "../workflow_scripts/train_model.py"
