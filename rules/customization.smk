rule customize:
    input:
        data=DATA,
        model=checkpoint("full", 0, config["generate"]["model_seed"]),
        base=BASE_INPUT,
    output:
        model=CUSTOM_MODEL,
        images=directory(CUSTOM_IMAGES),
        log_table=CUSTOM_LOG,
    log:
        LAYOUT.log("customize"),
    benchmark:
        LAYOUT.benchmark("customize")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=customization_params,
        resume_dir=lambda w: LAYOUT.custom_resume.format(**dict(w.items())),
    script:
        "../workflow_scripts/customize.py"


rule customization_eval:
    input:
        data=DATA,
        images=expand(CUSTOM_IMAGES, group=range(CUSTOM_GROUPS)),
        base=BASE_INPUT,
    output:
        table=CUSTOMIZATION_TABLE,
        summary=CUSTOMIZATION_MARKDOWN,
    log:
        LAYOUT.log("customization_eval"),
    benchmark:
        LAYOUT.benchmark("customization_eval")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        cfg=customization_params,
    script:
        "../workflow_scripts/customization_eval.py"
