rule train_model:
    input:
        data=DATA,
    output:
        checkpoints=[f"{MODEL_DIR}/step{step}.safetensors" for step in CKPT_STEPS],
        log_table=f"{MODEL_DIR}/train_log.csv",
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
