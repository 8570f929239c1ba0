"""Models: what a job names (spec, no torch), finding it before anything loads (resolve, no torch), GGUF
de-quantisation (gguf), and loading a base model with its FFN hook modules and tokenizer (load, torch).

Import the submodule you need: this package's __init__ imports nothing, so config and planning stay torch-free.
"""
