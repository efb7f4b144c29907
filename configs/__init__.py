"""The presets: this folder is packaged as ``allllm.presets`` (one source for repo and wheel)."""
