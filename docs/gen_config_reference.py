"""Builds reference/config.md from the schema at every `mkdocs build` (mkdocs-gen-files runs this):
the page is never written by hand, so it cannot drift from byol/config.py."""
import mkdocs_gen_files

from byol.config_doc import markdown

with mkdocs_gen_files.open("reference/config.md", "w") as page:
    page.write(markdown())
mkdocs_gen_files.set_edit_path("reference/config.md", "../byol/config.py")
