"""CLI subcommands: each module exposes `add_<name>_parser(sub)` and `run_<name>(args)`, and `vramplan.cli.PARSERS`
lists the parser functions. The training-plan flags the planning commands share are one list in
`plan_flags.py` (with their Hugging Face spellings from `vramplan.hf_names`). Modules here import nothing heavy at
import time: building the parser imports no pydantic, rich or torch."""
