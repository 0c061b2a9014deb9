"""`python -m byol.extract ...` (and `torchrun ... -m byol.extract ...`): the same as `byol extract`."""
from byol.extract.extract_command import main

main()
