"""The workflow's library: one job per module, shared by the thin scripts beside it.

Modules that train import torch; the others (idx, synthetic, download, files, schemas,
settings, sweep, naming, runfiles, tutorial_log, stats, tables, provenance, paper, figures,
gathering, bubble, pipeline_variants, pipeline_timing, pipeline_results, pipeline_report)
never do, so that jobs which do not train stay fast. Importing the package
itself imports nothing.
"""
