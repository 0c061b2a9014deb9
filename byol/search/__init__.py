"""Using the embeddings: the nearest store rows of any images (`byol search`) and groups of
near-duplicates in a store (`byol duplicates`), streamed through the one kNN core (byol.base.knn).

    nearest.py             the searches: nearest rows, duplicate pairs, groups
    queries.py             queries as rows: store rows, or images embedded by the store's encoder
    store_images.py        a store row's name (path or item) and thumbnail
    contact_sheet.py       the PNG of rows of thumbnails with captions
    search_command.py      byol search (python -m byol.search)
    duplicates_command.py  byol duplicates
"""
