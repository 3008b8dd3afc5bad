# diffattr — which training images made this diffusion model's output, and how good is that answer.
# The pipeline, stage by stage (each stage is one file under rules/):


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"  # prepare_data, make_subsets
include: "rules/train.smk"  # train_model (full and subset models)
include: "rules/generate.smk"  # generate (the "gen" attributed set), trajectory (its DDIM x̂₀ path)
include: "rules/ground_truth.smk"  # measure_outputs, gather_ground_truth
include: "rules/features.smk"  # featurize (sharded), gather_features
include: "rules/kernel.smk"  # gram_partial, kernel, select_lambda
include: "rules/score.smk"  # score (every method in the registry), score_trajectory (Journey-TRAK per step)
include: "rules/evaluate.smk"  # evaluate_lds, lds_table, retraining_curve, trajectory_lds


# Light bookkeeping runs on the submitting node; everything else is a cluster job.
localrules:
    all,
    make_subsets,
    gather_features,
    gather_ground_truth,
    evaluate_lds,
    lds_table,
    retraining_curve,
    trajectory_lds,


rule all:
    default_target: True
    input:
        LDS_TABLE,
        expand(SUBSET_MASKS, pool=POOLS),
        expand(RETRAINING_CURVE, method=RETRAINING_METHODS),
        expand(STEP_LDS, method=JOURNEY_METHODS),


onsuccess:
    print_table(LDS_MARKDOWN)
