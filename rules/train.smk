if BASE and not config["model"]["text_to_image"].get("pipeline_path"):

    rule pretrain_base:
        input:
            data=DATA,
        output:
            pipeline=directory(BASE),
            log_table=PRETRAIN_LOG,
        log:
            f"{OUT}/logs/pretrain_base.log",
        benchmark:
            f"{OUT}/benchmarks/pretrain_base.tsv"
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
        checkpoints=update(
            [f"{MODEL_DIR}/step{step}.safetensors" for step in CKPT_STEPS]
        ),
        log_table=update(f"{MODEL_DIR}/train_log.csv"),
    log:
        f"{OUT}/logs/train_model/{{pool}}/{{subset}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_model/{{pool}}/{{subset}}/seed{{seed}}.tsv"
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
        resume_dir=lambda w: f"{OUT}/resume/{w.pool}/{w.subset}/seed{w.seed}",
    script:
        "../workflow_scripts/train_model.py"
