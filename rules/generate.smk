rule generate:
    input:
        model=plan.generator,
        base=plan.base_input,
    output:
        store=directory(L.generated),
        table=L.generated_table,
    log:
        L.log("generate"),
    benchmark:
        L.benchmark("generate")
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
        },
    script:
        "../workflow_scripts/generate.py"


rule trajectory:
    input:
        model=plan.generator,
        generated=L.generated,
    output:
        trajectory=directory(L.trajectory),
    log:
        L.log("trajectory"),
    benchmark:
        L.benchmark("trajectory")
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
        },
    script:
        "../workflow_scripts/trajectory.py"
