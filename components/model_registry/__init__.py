"""The MLflow model registry: memforges models as pyfunc models, their registration and promotion."""
