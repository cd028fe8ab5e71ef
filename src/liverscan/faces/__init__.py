"""Faces: the command line and the Streamlit app, on top of the stages' public functions."""
