"""The library behind the verbs that use what training made: status, generate, eval, export,
plot, and tokenizer training.

Each module is what one CLI verb calls (the CLI only parses options and draws);
``trained`` loads a checkpoint's model and tokenizer the same way for all of them.
"""
