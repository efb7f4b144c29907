"""Small helpers every layer shares: atomic writes, format versions, fault points, UTC clocks,
JSON-lines files, a GC pause. They import nothing of allllm but ``errors``."""
