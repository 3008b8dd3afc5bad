rule evaluate_lds:
    input:
        scores=expand(SCORES, set=SETS, allow_missing=True),
        masks=SUBSET_MASKS.format(pool=LDS_POOL),
        truth=GROUND_TRUTH.format(pool=LDS_POOL),
    output:
        table=METHOD_LDS,
    params:
        lds={k: v for k, v in config["evaluation"]["lds"].items() if k != "pool"},
        sets=SETS,
    log:
        f"{OUT}/logs/evaluate_lds/{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate_lds/{{method}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/evaluate_lds.py"


rule lds_table:
    input:
        tables=expand(METHOD_LDS, method=METHODS),
        reliability=RELIABILITY.format(pool=LDS_POOL),
    output:
        csv=LDS_TABLE,
        markdown=LDS_MARKDOWN,
    log:
        f"{OUT}/logs/lds_table.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/lds_table.py"
