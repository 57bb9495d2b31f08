"""The dataset service: the only authority over imaging data (ingestion, datasets, FAIR
metadata, search, access grants).

The app factory is `dataset_service.app.create_app`; this package imports nothing, so that
`dataset_service.client` (what workloads use) stays light."""
