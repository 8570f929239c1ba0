"""The Ray-free worker: holds a loaded model, turns one language's token ids into its states, matches and neuron
counts (compute), keeps its pivot on the device, and writes the tables then the completion marker (lake) on
background threads, copying to the host only what is stored.

May import: compute, model, lake, methods, errors. Never Ray: the Ray actor wraps it (execution.actor).
"""
