# Figures of the HTML report (`snakemake --report results/report.html`, `diffattr report`).
# Each is a local job: plotting takes seconds and needs no cluster slot.
_REP = config["report"]
REPORT_SET = _REP["set"]
REPORT_SAMPLES = _REP["samples"]
REPORT_METHODS = [
    m
    for m in (_REP["methods"] or METHODS)
    if m in METHODS and REPORT_SET in method_sets(m)
]
"""The methods whose attribution grids the report shows: those configured that were run on its set."""
GRID = fill(LAYOUT.attribution_grid, set=REPORT_SET)
STEP_FIGURE = LAYOUT.step_figure
SWEEP_FIGURE = LAYOUT.sweep_figure
METHOD_RUNTIME = LAYOUT.method_runtime
"""Wall seconds of each method's own jobs: timings live under benchmarks/, never in a result file."""
LAMBDA_METHODS = {
    m: method_models(m)[0] for m in METHODS if config["methods"][m]["kind"] == "trak"
}
"""Kernel methods and the model whose λ sweep (select pool) the report plots."""
FINAL_OUTPUTS = [
    LDS_TABLE,
    *expand(SUBSET_MASKS, pool=POOLS),
    *expand(RETRAINING_CURVE, method=RETRAINING_METHODS),
    *expand(STEP_LDS, method=JOURNEY_METHODS),
    *([COUNTERFACTUAL] if CF_METHODS else []),
    *expand(SWEEP_TABLE, sweep=SWEEPS),
    *([CUSTOMIZATION_MARKDOWN] if CUSTOM_GROUPS else []),
]
"""What the run delivers; the runtime figure waits for all of it."""
REPORT_FIGURES = [
    LAYOUT.lds_figure,
    LAYOUT.runtime_figure,
    *([LAYOUT.lambda_figure] if LAMBDA_METHODS else []),
    *([LAYOUT.counterfactual_figure] if CF_METHODS else []),
    *expand(STEP_FIGURE, method=JOURNEY_METHODS),
    *expand(SWEEP_FIGURE, sweep=SWEEPS),
    *[GRID.format(method=m, sample=s) for m in REPORT_METHODS for s in REPORT_SAMPLES],
]


rule plot_lds:
    input:
        table=LDS_TABLE,
    output:
        png=report(
            LAYOUT.lds_figure,
            caption="../report/lds.rst",
            category="1 LDS",
            labels={"figure": "LDS per method and set"},
        ),
    log:
        LAYOUT.log("plot_lds"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_lds.py"


rule plot_lambda:
    input:
        curves=[
            LAMBDA_CURVE.format(
                method=m, **dict(zip(("pool", "subset", "seed"), model))
            )
            for m, model in LAMBDA_METHODS.items()
        ],
        oracle=[
            ORACLE_CURVE.format(
                method=m, **dict(zip(("pool", "subset", "seed"), models[0]))
            )
            for m, models in ORACLE_MODELS.items()
        ],
    output:
        png=report(
            LAYOUT.lambda_figure,
            caption="../report/lambda.rst",
            category="2 λ selection",
            labels={"figure": "LDS vs λ"},
        ),
    log:
        LAYOUT.log("plot_lambda"),
    conda:
        "../envs/torch.yaml"
    params:
        methods=list(LAMBDA_METHODS),
        oracle_methods=list(ORACLE_MODELS),
    script:
        "../workflow_scripts/plot_lambda.py"


rule plot_counterfactual:
    input:
        results=COUNTERFACTUAL,
    output:
        png=report(
            LAYOUT.counterfactual_figure,
            caption="../report/counterfactual.rst",
            category="3 Counterfactual",
            labels={"figure": "per-sample changes"},
        ),
    log:
        LAYOUT.log("plot_counterfactual"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_counterfactual.py"


rule attribution_grids:
    input:
        scores=SCORES.format(method="{method}", set=REPORT_SET),
        data=DATA,
        attributed=set_store(REPORT_SET),
    output:
        pngs=[
            report(
                fill(GRID, sample=s),
                caption="../report/attribution.rst",
                category="4 Attributions",
                subcategory="{method}",
                labels={"method": "{method}", "sample": f"{REPORT_SET} #{s}"},
            )
            for s in REPORT_SAMPLES
        ],
    log:
        LAYOUT.log("attribution_grids"),
    conda:
        "../envs/eval.yaml"
    params:
        set=REPORT_SET,
        split=REPORT_SET,  # an image store holds a set under the set's own name
        samples=REPORT_SAMPLES,
        top=_REP["top"],
    script:
        "../workflow_scripts/attribution_grids.py"


rule plot_trajectory:
    input:
        steps=STEP_LDS,
        lds=METHOD_LDS,
    output:
        png=report(
            STEP_FIGURE,
            caption="../report/trajectory.rst",
            category="5 Journey-TRAK",
            labels={"method": "{method}"},
        ),
    log:
        LAYOUT.log("plot_trajectory"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_trajectory.py"


rule plot_sweep:
    input:
        table=SWEEP_TABLE,
    output:
        png=report(
            SWEEP_FIGURE,
            caption="../report/sweep.rst",
            category="7 Sweeps",
            subcategory="{sweep}",
            labels={"figure": "LDS vs value"},
        ),
    log:
        LAYOUT.log("plot_sweep"),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_sweep.py"


rule plot_runtime:
    input:
        FINAL_OUTPUTS,
    output:
        png=report(
            LAYOUT.runtime_figure,
            caption="../report/runtime.rst",
            category="6 Runtime and memory",
            labels={"figure": "per rule"},
        ),
        table=report(
            LAYOUT.runtime_table,
            caption="../report/runtime.rst",
            category="6 Runtime and memory",
            labels={"figure": "table"},
        ),
        methods=report(
            METHOD_RUNTIME,
            caption="../report/runtime.rst",
            category="6 Runtime and memory",
            labels={"figure": "per method"},
        ),
    log:
        LAYOUT.log("plot_runtime"),
    conda:
        "../envs/eval.yaml"
    params:
        output_dir=lambda w, output: str(Path(output.table).parents[1]),  # holds benchmarks/
        # each method's own jobs (the seconds lds.csv does not hold)
        method_benchmarks={
            m: method_benchmarks(SimpleNamespace(method=m)) for m in METHODS
        },
    script:
        "../workflow_scripts/plot_runtime.py"
