"""allllm: step-wise (incremental) pre-training of decoder-only LLMs.

The package root stays import-light on purpose: ``allllm --help`` must answer
in well under a second, so torch and transformers are imported only by the
modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
