"""The lake's DuckDB views as plain .sql files, installed as the package `neuronxa_ray.views` (see pyproject)."""
