"""Faces: the command line and the Streamlit app, on top of the stages' public functions."""

#: the app's upload limit, also passed to Streamlit (server.maxUploadSize) so both refuse the same files
APP_MAX_UPLOAD_MB = 50
