"""python -m byol.search QUERY... --store STORE --out OUT (= byol search; see byol/search/search_command.py)."""
from byol.search.search_command import main

if __name__ == "__main__":
    main()
