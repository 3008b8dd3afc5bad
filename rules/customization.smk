rule customize:
    input:
        data=L.data,
        model=plan.generator,
        base=plan.base_input,
    output:
        model=L.custom_model,
        images=directory(L.custom_images),
        log_table=L.custom_log,
    log:
        L.log("customize"),
    benchmark:
        L.benchmark("customize")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        cfg=plan.customization_params,
        resume_dir=lambda w: L.custom_resume.format(**dict(w.items())),
    script:
        "../workflow_scripts/customize.py"


rule customization_eval:
    input:
        data=L.data,
        images=expand(L.custom_images, group=range(plan.custom_groups)),
        base=plan.base_input,
    output:
        table=L.customization_table,
        summary=L.customization_markdown,
    log:
        L.log("customization_eval"),
    benchmark:
        L.benchmark("customization_eval")
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        cfg=plan.customization_params,
    script:
        "../workflow_scripts/customization_eval.py"
