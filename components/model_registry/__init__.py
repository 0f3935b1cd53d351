"""The MLflow model registry: memforge's models as pyfunc models (``pyfunc``), their registration (``register``),
promotion (``promote``) and ``models:/`` references (``resolve``); names of aliases and tags in ``tags``."""
