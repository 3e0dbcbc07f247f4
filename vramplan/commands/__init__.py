"""CLI subcommands that live in their own module: each exposes `add_<name>_parser(sub)` and `run_<name>(args)`,
and `vramplan.cli.PARSERS` lists the parser functions. Modules here import nothing heavy at import time."""
