"""`python -m byol.report RUN_DIR`: the same as `byol report RUN_DIR`."""
from byol.report.report_command import main

main()
