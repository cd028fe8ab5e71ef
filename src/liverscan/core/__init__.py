"""Core: what every stage shares — configuration, images, the model, errors, files and the run-directory contract.

Nothing in ``core`` imports a stage (preparation, training, evaluation, serving) or a face (CLI, app).
"""
