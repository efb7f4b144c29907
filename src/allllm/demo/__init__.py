"""``allllm demo``: the whole step-wise workflow on the running Python's own docstrings.

``workspace`` prepares (and refuses to touch a foreign) demo folder, ``corpus``
builds the text, ``run`` runs the same library calls a user's verbs make.
"""
