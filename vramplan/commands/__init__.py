"""CLI subcommands: each module exposes `add_<name>_parser(sub)` and `run_<name>(args)`; `vramplan.cli.COMMANDS`
registers them by module name with their one-line help (owned there: `add_parser` here gets no `help=`), and only
the invoked command's module is imported (`parsing.LazySubcommands`). The training-plan flags the planning commands
share are one list in `plan_flags.py` (with their Hugging Face spellings from `vramplan.hf_names`); reading argv
(strict argparse, HF's underscore spelling, `--gpu-dir`, a stdout that survives a closed pipe) is `parsing.py`;
every table, sentence and JSON object a command prints is drawn by `vramplan.report`. Modules here import nothing
heavy at import time (building a parser imports no records, rich or torch) and never import `vramplan.cli`
(tests/test_cli_imports.py); `--help`, `models` and `gpus` stay as light as argparse allows
(tests/test_cli_startup_imports.py; timings: benchmarks/cli_startup.py)."""
