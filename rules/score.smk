rule score:
    input:
        unpack(method_inputs),
    output:
        scores=directory(SCORES),
    log:
        f"{OUT}/logs/score/{{method}}/{{set}}.log",
    benchmark:
        f"{OUT}/benchmarks/score/{{method}}/{{set}}.tsv"
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
        method=lambda w: config["methods"][w.method],
    script:
        "../workflow_scripts/score.py"
