def method_inputs(w):
    """The artifacts a method's kind declares it needs (the generated set only for "gen")."""
    needs = method_kind(config["methods"][w.method]).needs
    return {n: ARTIFACTS[n] for n in needs if n != "generated" or w.set == "gen"}


rule score:
    input:
        unpack(method_inputs),
    output:
        scores=directory(SCORES),
    params:
        method=lambda w: config["methods"][w.method],
    log:
        f"{OUT}/logs/score/{{method}}/{{set}}.log",
    benchmark:
        f"{OUT}/benchmarks/score/{{method}}/{{set}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/score.py"
