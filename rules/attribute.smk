# An attribute run (README "Attribute your own model"): a user's diffusers model and images to explain.
# The model is imported once into the checkpoint format every model job reads; the queries become the
# "query" split of an image store; each method's scores end in a top-k table.


rule import_model:
    input:
        model=config["attribute"]["model"] if plan.attribute else [],
        lora=plan.attribute_lora,
    output:
        checkpoint=L.imported_model,
    log:
        L.log("import_model"),
    benchmark:
        L.benchmark("import_model")
    conda:
        "../envs/torch.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        model=plan.model,
    script:
        "../workflow_scripts/import_model.py"


rule import_checkpoint:
    input:
        unpack(plan.checkpoint_source),
    output:
        checkpoint=L.imported_checkpoint,
    log:
        L.log("import_checkpoint"),
    benchmark:
        L.benchmark("import_checkpoint")
    conda:
        "../envs/torch.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        model=plan.model,
    script:
        "../workflow_scripts/import_model.py"


rule prepare_queries:
    input:
        folder=(config["attribute"].get("queries") or []) if plan.attribute else [],
    output:
        store=directory(L.query_images),
        table=L.query_table,
    log:
        L.log("prepare_queries"),
    benchmark:
        L.benchmark("prepare_queries")
    conda:
        "../envs/data.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        channels=plan.image_channels,
    script:
        "../workflow_scripts/prepare_queries.py"


rule top_attributions:
    input:
        scores=L.scores,
        data=L.data,
        metadata=L.metadata,
        queries=lambda w: L.query_table if w.set == "query" else [],
    output:
        csv=L.topk_table,
        parquet=L.topk_parquet,
    log:
        L.log("top_attributions"),
    conda:
        "../envs/eval.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=30,
    params:
        top=config["attribute"]["top"] if plan.attribute else 0,
    script:
        "../workflow_scripts/top_attributions.py"
