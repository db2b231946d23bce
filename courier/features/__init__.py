"""The feature stages: item images -> embeddings -> clusters -> each item's Cluster-ID.

embed.py     courier embed:   item_images -> item_embeddings (predict_batch_udf, MERGE)
cluster.py   courier cluster: item_embeddings -> cluster_centroids (faiss k-means, stable ids)
assign.py    courier assign:  item_embeddings + centroids -> item_image_features (history, CDF)
views.py     the analyst views of sql/features/
report.py    courier report:  cluster image grid, 2-D embedding map (PNGs)
export.py    courier export-features --format mmrec
"""
