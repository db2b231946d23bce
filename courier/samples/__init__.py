"""The sample build: raw impressions and items -> COURIER training samples (Delta)."""
