"""What the Snakemake workflow and the tools around it share: where every artifact lives."""
