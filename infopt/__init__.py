"""The offline tools: the `infopt` command line, model preparation and the analyzer's training.

None of this runs on the request path; the serving core (`serving`) never imports it.
"""
