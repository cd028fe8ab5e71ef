"""Defaults the command line shows in its help, kept apart from :mod:`liverscan.core.config` (which re-exports
them) so that ``liverscan --help`` loads neither the schema nor YAML."""

#: flag ``needs_review`` when an answer's confidence is below this (predict, studies, the app)
REVIEW_CONFIDENCE = 0.6
