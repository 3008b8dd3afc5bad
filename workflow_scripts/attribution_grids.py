from diffattr.jobs import job
from diffattr.show import draw_attribution

with job(snakemake) as log:
    p = snakemake.params
    for sample, png in zip(p.samples, snakemake.output.pngs):
        shown = draw_attribution(snakemake.input.scores, snakemake.input.data, snakemake.input.attributed, p.split,
                                 snakemake.wildcards.method, p.set, sample, p.top, png)
        log.info("%s", shown.table)
