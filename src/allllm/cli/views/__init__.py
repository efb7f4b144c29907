"""The terminal views of the CLI: rich progress bars, tables and summaries, one module per verb.

Views only draw what the library returns or reports; they hold no logic a
Python caller would miss.
"""
