"""Microbenchmarks for the layers and kernels of a 4DS video MAE.

``python -m megavid.kernels.bench {gemm,attention,layernorm,patch_embed,triton,decode,all}``;
every run prints a table and writes one results file in the format of
``megavid.tools.bench_results`` (sweeps also write PNG plots).
"""
