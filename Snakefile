# diffattr — which training images made this diffusion model's output, and how good is that answer.
# The pipeline, stage by stage (each stage is one file under rules/):


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"  # prepare_data, make_subsets
include: "rules/train.smk"  # train_model (full and subset models)
include: "rules/generate.smk"  # generate (the "gen" attributed set)
include: "rules/ground_truth.smk"  # measure_outputs, gather_ground_truth
include: "rules/features.smk"  # featurize (sharded), gather_features
include: "rules/kernel.smk"  # gram_partial, kernel, select_lambda
include: "rules/score.smk"  # score (every method in the registry)
include: "rules/evaluate.smk"  # evaluate_lds, lds_table, retraining_curve


# Light bookkeeping runs on the submitting node; everything else is a cluster job.
localrules:
    all,
    make_subsets,
    gather_features,
    gather_ground_truth,
    evaluate_lds,
    lds_table,
    retraining_curve,


rule all:
    default_target: True
    input:
        LDS_TABLE,
        expand(SUBSET_MASKS, pool=POOLS),
        expand(RETRAINING_CURVE, method=RETRAINING_METHODS),


onsuccess:
    print_table(LDS_MARKDOWN)
