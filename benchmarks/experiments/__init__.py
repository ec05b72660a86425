"""rnlib experiments: one module per experiment, each runnable as `python -m benchmarks.experiments.<name>`.

degradation (He et al. 2015), ln_rnn (Ba et al. 2016), stats_loss (what LayerNorm throws away),
shattered_gradients (Balduzzi et al. 2017). Results go to benchmarks/results/experiments/; see docs/EXPERIMENTS.md.
"""
