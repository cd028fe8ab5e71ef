"""Faces: the command line and the Streamlit app, on top of the stages' public functions."""

#: the app's upload limit, also passed to Streamlit (server.maxUploadSize) so both refuse the same files
APP_MAX_UPLOAD_MB = 50

#: exit codes, the same in every command (the README's "Exit codes" table lists them; a test keeps both in step).
#: A command stopped by a signal exits 128 + its number, as shells report it: 130 Ctrl+C (SIGINT), 143 SIGTERM,
#: 129 SIGHUP. 3 is left to examples/reproduce.py ("nothing reproduced": its data is absent).
EXIT_OK = 0
EXIT_ERROR = 1  # a model, data, run-directory or file error: the command could not do its work
EXIT_USAGE = 2  # a bad option value, a missing argument or a bad configuration key or value (Click's convention)
EXIT_SOME_FAILED = 4  # predict finished, but some files failed (their records say why)
