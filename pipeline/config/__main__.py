"""`python -m pipeline.config [overrides]`: write params.yaml from conf/ (what `make params` runs)."""

from pipeline.config.composition import main

main()
