"""The workflow's library: one job per module, shared by the thin scripts beside it.

Modules that train import torch; the others (idx, synthetic, files, settings, runfiles,
tutorial_log, stats, tables, paper, figures) never do, so that jobs which do not train
stay fast. Importing the package itself imports nothing.
"""
