from diffattr.evaluate.table import evaluate_method
from diffattr.jobs import job

with job(snakemake):
    scores = dict(zip(snakemake.params.sets, snakemake.input.scores))
    reference = dict(zip(snakemake.params.reference_sets, snakemake.input.reference))
    evaluate_method(snakemake.wildcards.method, scores, snakemake.input.masks, snakemake.input.truth,
                    snakemake.params.lds, snakemake.output.table, reference)
