"""CLI subcommands: each module exposes `add_<name>_parser(sub)` and `run_<name>(args)`, and `vramplan.cli.PARSERS`
registers the parser functions. The training-plan flags the planning commands share are one list in
`plan_flags.py` (with their Hugging Face spellings from `vramplan.hf_names`); reading argv (strict argparse, HF's
underscore spelling, a stdout that survives a closed pipe) is `parsing.py`; every table, sentence and JSON object a
command prints is drawn by `vramplan.report`. Modules here import nothing heavy at import time (building the
parser imports no pydantic, rich or torch) and never import `vramplan.cli` (tests/test_cli_imports.py)."""
