rule train_model:
    input:
        data=DATA,
    output:
        checkpoints=[f"{MODEL_DIR}/step{step}.safetensors" for step in CKPT_STEPS],
        log_table=f"{MODEL_DIR}/train_log.csv",
    params:
        cfg=lambda w: train_params(config, w.pool, w.subset),
        resume_dir=lambda w: f"{OUT}/resume/{w.pool}/{w.subset}/seed{w.seed}",
    log:
        f"{OUT}/logs/train_model/{{pool}}/{{subset}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_model/{{pool}}/{{subset}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_model.py"
