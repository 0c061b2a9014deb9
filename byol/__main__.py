"""`python -m byol SUBCOMMAND ...`: the same as the `byol` console script (byol/commands.py)."""
from byol.commands import main

main()
