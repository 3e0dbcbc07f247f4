"""vramplan: a GPU-memory planner and hardware advisor for fine-tuning LLMs.

The core (specs, hardware, plan, estimator, advisor, CLI) imports no torch and starts instantly;
`vramplan.measure` runs the real stack (torch, transformers, peft, bitsandbytes) and imports them lazily.
"""

__version__ = "0.1.0"
