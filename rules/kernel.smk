rule gram_partial:
    input:
        shard=fill(FEATURE_SHARD, split="train"),
    output:
        gram=directory(GRAM_PARTIAL),
    log:
        LAYOUT.log("gram_partial"),
    benchmark:
        LAYOUT.benchmark("gram_partial")
    conda:
        "../envs/torch.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        spec_hash=lambda w: spec_hash(feature_spec_params(w)),
        rows=lambda w: shard_ranges_of(w.spec, "train")[int(w.shard)],
        n_train=SIZES["train"],
    script:
        "../workflow_scripts/gram_partial.py"


rule kernel:
    input:
        unpack(kernel_inputs),
    output:
        kernel=update(directory(KERNEL)),
    log:
        LAYOUT.log("kernel"),
    benchmark:
        LAYOUT.benchmark("kernel")
    group:
        "solve"
    conda:
        "../envs/torch.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        form=lambda w: kernel_form_of(w.spec),
    script:
        "../workflow_scripts/kernel.py"


rule select_lambda:
    input:
        unpack(lambda_sweep_inputs("select")),
    output:
        curve=LAMBDA_CURVE,
    log:
        LAYOUT.log("select_lambda"),
    benchmark:
        SELECT_BENCHMARK
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
        **lambda_sweep_params("select"),
    script:
        "../workflow_scripts/select_lambda.py"


# Diagnostic only: the same λ sweep on the evaluation pool (the "oracle" rows of the LDS table and the
# dashed curves of the λ figure). A job of its own, so that growing the lds pool re-runs it and never
# the select-pool choice that every score (and counterfactual retraining) depends on.
use rule select_lambda as oracle_lambda with:
    input:
        unpack(lambda_sweep_inputs(LDS_POOL)),
    output:
        curve=ORACLE_CURVE,
    log:
        LAYOUT.log("oracle_lambda"),
    benchmark:
        LAYOUT.benchmark("oracle_lambda")
    params:
        **lambda_sweep_params(LDS_POOL),
