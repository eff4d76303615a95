"""One module per operation. Each opens a session (:mod:`cloudguard.session`), does its
work and returns a plain dict that the CLI prints or dumps as JSON. Operations import
the session layer and the layers below it, never the CLI or each other's faces."""
