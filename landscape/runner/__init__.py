"""Running many pipelines: sweep grids, the local ``dvc queue`` engine, the Ray engine and the services a
multi-machine sweep needs (PostgreSQL, an MLflow server, a Ray head). The statistics of their results live in
:mod:`landscape.study`."""
