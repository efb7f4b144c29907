"""Tokenizers behind one interface: Hugging Face, SentencePiece, tiktoken and the built-in bytes.

Importing this package loads no tokenizer library; a backend's library is
imported when a config selects it (see ``manager.BACKENDS``).
"""

from allllm.tokenizer.manager import BACKENDS, TokenizerManager, load_tokenizer

__all__ = ["BACKENDS", "TokenizerManager", "load_tokenizer"]
