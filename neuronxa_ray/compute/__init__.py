"""The numbers, on tensors only: hooks scoped to one extraction call, the fused NAS/NAV/hidden-state reductions
(Triton on CUDA, torch elsewhere), sentence states, cosine matrices and mutual-nearest-neighbour matching.

May import: torch, neuronxa_ray.model (a loaded model), errors, methods. Never the lake or Ray: nothing here writes.
"""
