rule gram_partial:
    input:
        shard=fill(L.feature_shard, split="train"),
    output:
        gram=directory(L.gram_partial),
    log:
        L.log("gram_partial"),
    benchmark:
        L.benchmark("gram_partial")
    conda:
        "../envs/torch.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        spec_hash=lambda w: spec_hash(plan.feature_spec(w)),
        rows=lambda w: plan.shard_ranges(w.spec, "train")[int(w.shard)],
        n_train=plan.sizes["train"],
    script:
        "../workflow_scripts/gram_partial.py"


rule kernel:
    input:
        unpack(plan.kernel_inputs),
    output:
        kernel=update(directory(L.kernel)),
    log:
        L.log("kernel"),
    benchmark:
        L.benchmark("kernel")
    group:
        "solve"
    conda:
        "../envs/torch.yaml"
    resources:
        **SLURM,
        mem_mb=4000,
        runtime=60,
    params:
        form=lambda w: plan.kernel_form(w.spec),
    script:
        "../workflow_scripts/kernel.py"


rule select_lambda:
    input:
        unpack(plan.lambda_sweep_inputs("select")),
    output:
        curve=L.lambda_curve,
    log:
        L.log("select_lambda"),
    benchmark:
        L.benchmark("select_lambda")
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
        **plan.lambda_sweep_params("select"),
    script:
        "../workflow_scripts/select_lambda.py"


# Diagnostic only: the same λ sweep on the evaluation pool (the "oracle" rows of the LDS table and the
# dashed curves of the λ figure). A job of its own, so that growing the lds pool re-runs it and never
# the select-pool choice that every score (and counterfactual retraining) depends on.
use rule select_lambda as oracle_lambda with:
    input:
        unpack(plan.lambda_sweep_inputs(plan.lds_pool)),
    output:
        curve=L.oracle_curve,
    log:
        L.log("oracle_lambda"),
    benchmark:
        L.benchmark("oracle_lambda")
    params:
        **plan.lambda_sweep_params(plan.lds_pool),
