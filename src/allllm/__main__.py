"""``python -m allllm`` — the same entry point as the ``allllm`` console script."""

from allllm.cli import main

if __name__ == "__main__":
    main()
