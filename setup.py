"""Package discovery that pyproject.toml alone cannot express.

Every package under src/ is found automatically; ``allllm.presets`` is the
repository's configs/ folder (mapped in pyproject.toml), which lies outside
src/ so that it stays the single source of the presets.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "allllm.presets"])
