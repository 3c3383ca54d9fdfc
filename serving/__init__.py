"""The BentoML service (issue 5): loads doorstep-eta@champion (with its leg model) from the
MLflow registry and answers with the same ``features/`` code as training. Not built yet."""
