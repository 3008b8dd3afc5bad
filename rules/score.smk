rule score:
    input:
        unpack(method_inputs),
    output:
        scores=update(directory(SCORES)),
    log:
        LAYOUT.log("score"),
    benchmark:
        SCORE_BENCHMARK
    group:
        "score"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        method=lambda w: method_params(w.method),
    script:
        "../workflow_scripts/score.py"


rule residuals:
    input:
        model=lambda w: checkpoint(w.pool, w.subset, w.seed),
        data=DATA,
    output:
        residuals=directory(RESIDUAL),
    log:
        LAYOUT.log("residuals"),
    benchmark:
        RESIDUAL_BENCHMARK
    group:
        "solve"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        residual=lambda w: config["methods"][w.method]["residual"]
        | model_params(config),
    script:
        "../workflow_scripts/residuals.py"


rule score_trajectory:
    input:
        unpack(journey_inputs),
    output:
        scores=directory(STEP_SCORES),
    log:
        LAYOUT.log("score_trajectory"),
    benchmark:
        LAYOUT.benchmark("score_trajectory")
    group:
        "score"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **GPU,
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        method=lambda w: method_params(w.method),
    script:
        "../workflow_scripts/score_trajectory.py"
