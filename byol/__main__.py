"""`python -m byol SUBCOMMAND ...`: the same as the `byol` console script (byol/subcommands.py)."""
from byol.subcommands import main

main()
