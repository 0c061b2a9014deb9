"""The ground floor: helpers every stage may use, importing nothing from byol above this package.

    errors        the exception types (user mistakes vs failures) and their one-line messages
    atomic        writes that either complete or leave the old file (temp file + rename), SHA-256
    file_lock     one writer per output folder
    background    a producer thread feeding a bounded queue
    stopping      SIGINT/SIGTERM/SIGUSR1 -> a clean stop at the next safe point
    distributed   torchrun's world (rank, device, DDP only when world size > 1)
    provenance    library versions recorded with every checkpoint, encoder file and store
    durations     "90m", "2h30m", "1d": time budgets parsed and checked once
    knn           the one k-nearest-neighbour core (running top-k, votes): training's monitor,
                  the kNN probe and the report's gallery share it
"""
