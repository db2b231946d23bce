"""``courier experiment``: the paper's comparison of image features for CTR, on one warehouse.

(courier/config/experiment.py: the experiment section: variants, seeds, usages, k values)
arms.py           the arms (variant x usage x k) and the tables each one owns
state.py          what a run has finished: state.json, each CTR model's result
run.py            encoders -> features -> ctr_samples -> CTR models per seed; resumable; MLflow
style_metrics.py  how much hidden style an encoder recovers (k-NN, NMI)
report.py         lifts, bootstrap intervals, RESULTS.md, pictures, report.html
"""
