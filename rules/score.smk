rule score:
    input:
        unpack(lambda w: plan.method_inputs(w.method, w.set)),
    output:
        scores=update(directory(L.scores)),
    log:
        L.log("score"),
    benchmark:
        L.benchmark("score")
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
        method=lambda w: plan.method_params(w.method),
    script:
        "../workflow_scripts/score.py"


rule residuals:
    input:
        model=lambda w: plan.checkpoint(w.pool, w.subset, w.seed),
        data=L.data,
    output:
        residuals=directory(L.residual),
    log:
        L.log("residuals"),
    benchmark:
        L.benchmark("residuals")
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
        residual=lambda w: plan.method(w.method)["residual"] | plan.model,
    script:
        "../workflow_scripts/residuals.py"


rule score_trajectory:
    input:
        unpack(lambda w: plan.method_inputs(w.method, "gen")),
    output:
        scores=directory(L.step_scores),
    log:
        L.log("score_trajectory"),
    benchmark:
        L.benchmark("score_trajectory")
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
        method=lambda w: plan.method_params(w.method),
    script:
        "../workflow_scripts/score_trajectory.py"
