"""How the reference's sample data is written in JSON, decoded the same way by the
recorder (``record_gluon.py``, under MXNet's venv) and the checks (``tests/test_reference.py``).
"""

import numpy as np


def build_data(value):
    """JSON back into samples: ``{"__ndarray__": values, "dtype": name}`` is an array."""
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"])
    if isinstance(value, dict):
        return {key: build_data(v) for key, v in value.items()}
    if isinstance(value, list):
        return [build_data(v) for v in value]
    return value
