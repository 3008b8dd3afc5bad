# Figures of the HTML report (`snakemake --report results/report.html`, `diffattr report`).
# Each is a local job: plotting takes seconds and needs no cluster slot.
# What they show and what `rule all` delivers: plan.report_figures, plan.final_outputs.


rule plot_lds:
    input:
        table=L.lds_table,
    output:
        png=report(
            L.lds_figure,
            caption="../report/lds.rst",
            category="1 LDS",
            labels={"figure": "LDS per method and set"},
        ),
    log:
        L.log("plot_lds"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_lds.py"


rule plot_lambda:
    input:
        curves=[
            L.lambda_curve.format(
                method=m, **dict(zip(("pool", "subset", "seed"), model))
            )
            for m, model in plan.lambda_methods.items()
        ],
        oracle=[
            L.oracle_curve.format(
                method=m, **dict(zip(("pool", "subset", "seed"), models[0]))
            )
            for m, models in plan.oracle_models.items()
        ],
    output:
        png=report(
            L.lambda_figure,
            caption="../report/lambda.rst",
            category="2 λ selection",
            labels={"figure": "LDS vs λ"},
        ),
    log:
        L.log("plot_lambda"),
    conda:
        "../envs/torch.yaml"
    params:
        methods=list(plan.lambda_methods),
        oracle_methods=list(plan.oracle_models),
    script:
        "../workflow_scripts/plot_lambda.py"


rule plot_counterfactual:
    input:
        results=L.counterfactual,
    output:
        png=report(
            L.counterfactual_figure,
            caption="../report/counterfactual.rst",
            category="3 Counterfactual",
            labels={"figure": "per-sample changes"},
        ),
    log:
        L.log("plot_counterfactual"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_counterfactual.py"


rule attribution_grids:
    input:
        scores=L.scores.format(method="{method}", set=plan.report_set),
        data=L.data,
        attributed=plan.set_store(plan.report_set),
    output:
        pngs=[
            report(
                fill(plan.grid, sample=s),
                caption="../report/attribution.rst",
                category="4 Attributions",
                subcategory="{method}",
                labels={"method": "{method}", "sample": f"{plan.report_set} #{s}"},
            )
            for s in plan.report_samples
        ],
    log:
        L.log("attribution_grids"),
    conda:
        "../envs/eval.yaml"
    params:
        set=plan.report_set,
        split=plan.report_set,  # an image store holds a set under the set's own name
        samples=plan.report_samples,
        top=config["report"]["top"],
    script:
        "../workflow_scripts/attribution_grids.py"


rule plot_trajectory:
    input:
        steps=L.step_lds,
        lds=L.method_lds,
    output:
        png=report(
            L.step_figure,
            caption="../report/trajectory.rst",
            category="5 Journey-TRAK",
            labels={"method": "{method}"},
        ),
    log:
        L.log("plot_trajectory"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_trajectory.py"


rule plot_sweep:
    input:
        table=L.sweep_table,
    output:
        png=report(
            L.sweep_figure,
            caption="../report/sweep.rst",
            category="7 Sweeps",
            subcategory="{sweep}",
            labels={"figure": "LDS vs value"},
        ),
    log:
        L.log("plot_sweep"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_sweep.py"


rule plot_runtime:
    input:
        plan.final_outputs,
    output:
        png=report(
            L.runtime_figure,
            caption="../report/runtime.rst",
            category="6 Runtime and memory",
            labels={"figure": "per rule"},
        ),
        table=report(
            L.runtime_table,
            caption="../report/runtime.rst",
            category="6 Runtime and memory",
            labels={"figure": "table"},
        ),
        methods=report(
            L.method_runtime,
            caption="../report/runtime.rst",
            category="6 Runtime and memory",
            labels={"figure": "per method"},
        ),
    log:
        L.log("plot_runtime"),
    conda:
        "../envs/eval.yaml"
    params:
        output_dir=lambda w, output: str(Path(output.table).parents[1]),  # holds benchmarks/
        # each method's own jobs (the seconds lds.csv does not hold)
        method_benchmarks={m: plan.method_benchmarks(m) for m in plan.methods},
    script:
        "../workflow_scripts/plot_runtime.py"
