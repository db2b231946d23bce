"""Downstream CTR evaluation: does the image feature lift click-through prediction?

samples.py   courier ctr-samples: raw_impressions + as-of item_image_features -> ctr_samples
data.py      ctr_samples -> split by date -> vocabularies -> tensors
model.py     the DIN-style CTR model (method.md, appendix A) with the image usages of appendix B
train.py     AdamW on BCE, early stopping on validation AUC, deterministic for a seed
metrics.py   AUC, GAUC, AUC per category, paired bootstrap of a lift
evaluate.py  one variant: train on the training days, score the test days
"""
