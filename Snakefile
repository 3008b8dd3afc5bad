# diffattr — which training images made this diffusion model's output, and how good is that answer.
# The pipeline, stage by stage (each stage is one file under rules/):


from diffattr.config import ConfigError, read_config_file

try:  # Snakemake's own message for a YAML error names neither the file nor the line
    read_config_file(f"{workflow.basedir}/config.yaml", "config.yaml")
except ConfigError as error:
    raise ConfigError(str(error)) from None  # the sentence, and no frame of diffattr/


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"  # prepare_data, make_subsets
include: "rules/train.smk"  # train_model (full and subset models)
include: "rules/attribute.smk"  # import_model, prepare_queries, top_attributions (an attribute run)
include: "rules/generate.smk"  # generate (the "gen" attributed set), trajectory (its DDIM x̂₀ path)
include: "rules/ground_truth.smk"  # measure_outputs, gather_ground_truth
include: "rules/features.smk"  # featurize (sharded), gather_features
include: "rules/kernel.smk"  # gram_partial, kernel, select_lambda
include: "rules/score.smk"  # score (every method in the registry), score_trajectory (Journey-TRAK per step)
include: "rules/evaluate.smk"  # evaluate_lds, lds_table, retraining_curve, trajectory_lds, sweep_table
include: "rules/customization.smk"  # customize (AbC: fine-tune on exemplars, synthesize), customization_eval
include: "rules/counterfactual.smk"  # counterfactual_train (remove top-k, retrain), counterfactual_evaluate, counterfactual_table
include: "rules/report.smk"  # plot_lds, plot_lambda, plot_counterfactual, attribution_grids, plot_trajectory, plot_sweep, plot_runtime


# Light bookkeeping runs on the submitting node; everything else is a cluster job.
localrules:
    all,
    top_attributions,
    make_subsets,
    gather_features,
    gather_ground_truth,
    evaluate_lds,
    lds_table,
    retraining_curve,
    trajectory_lds,
    sweep_table,
    counterfactual_table,
    plot_lds,
    plot_lambda,
    plot_counterfactual,
    attribution_grids,
    plot_trajectory,
    plot_sweep,
    plot_runtime,


rule all:
    default_target: True
    input:
        plan.final_outputs,
        plan.report_figures,


# Repair what killed jobs left under output_dir (diffattr/atomic.py: orphan asides renamed back, old
# asides and temporaries removed). onstart runs only in the main Snakemake process, after the DAG is
# built, while it holds the working-directory lock, and never for a dry-run (snakemake/workflow.py,
# `if not self.dryrun and not self.execution_settings.no_hooks: self._onstart(...)`); every job
# process, local or on a cluster, is spawned with --no-hooks (snakemake/spawn_jobs.py), so no job
# has started yet and no running job's temporary can be swept.
onstart:
    from diffattr.atomic import describe_sweep, sweep
    from diffattr.integrity import settle_backups, update_outputs
    from diffattr.query import record_run

    # {output_dir}/run.json: what `diffattr query --run DIR` rebuilds the plan from
    record_run(OUT, RUN_CONFIG)
    if line := describe_sweep(OUT, sweep(OUT)):
        print(line)
    # update()-flagged outputs are kept (copied to .snakemake/backups) while their job re-runs; a
    # backup an interrupted run left behind is dropped (the output is whole) or moved back.
    settle_backups(
        update_outputs(workflow.dag.needrun_jobs()),
        workflow.persistence.path / "backups",
    )


# A failed job's update() outputs are restored by Snakemake and would pass as up to date: mark
# them incomplete so the next run (--rerun-incomplete, as the profiles set) rebuilds them.
onerror:
    from diffattr.integrity import mark_failed_incomplete

    mark_failed_incomplete(workflow)


onsuccess:
    print_table("LDS", L.lds_markdown)
    print_table("Counterfactual", L.counterfactual_markdown)
    print_table("Customization (AbC)", L.customization_markdown)
