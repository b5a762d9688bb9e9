"""The pyfunc model every registered genpar version is, written as MLflow *models from code*.

MLflow copies this file into the model folder and runs it on `mlflow.pyfunc.load_model`
(and in `mlflow models serve`): it defines the model class and hands MLflow an instance with
`set_model`. Nothing is pickled: `load_context` rebuilds the network from the exported
`model.json` and loads `model.safetensors` (verified by sha256), and reads `serving.json`
(chunk size, request limit, image shape). See genpar_models/infer/serving.py for what
`predict` takes and returns; a bad request becomes an `MlflowException` with
INVALID_PARAMETER_VALUE, which MLflow's scoring server answers with 400 and the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from genpar_models.errors import GenparError
from genpar_models.infer.encoding import use_c_json_encoder


class GenparModel(PythonModel):
    """A genpar model served through pyfunc: sample, reconstruct or score (ELBO)."""

    def load_context(self, context: Any) -> None:
        from genpar_models.infer.serving import Server, ServingSpec
        from genpar_models.models.export import load_model
        from genpar_models.models.registry import get_family

        model, meta = load_model(context.artifacts["model"])
        spec = ServingSpec.from_json(json.loads(Path(context.artifacts["serving"]).read_text()))
        self._server = Server(model, get_family(meta["model_spec"]["name"]), spec)
        use_c_json_encoder()  # the answers' JSON costs more than sampling otherwise

    # No type hints on model_input: MLflow would read them as the signature, which the logged
    # model already carries explicitly.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        try:
            return self._server.predict(model_input, params)
        except GenparError as e:  # a bad request (names the row and field): a 400 answer
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(GenparModel())
