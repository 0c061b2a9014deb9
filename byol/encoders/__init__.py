"""Encoders: build one (`build`), load any checkpoint safely (`files`), convert other projects'
layouts by parameter name (`foreign`), and wrap one for embedding images (`source`)."""
