"""neuronxa_ray: NeuronXA cross-lingual alignment from FFN neuron states, with Ray, Parquet and DuckDB."""

__version__ = "0.1.0"
