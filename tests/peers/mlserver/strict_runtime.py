"""A strict MLServer model for the peer tests: like Triton and TF Serving, it rejects any input
its signature does not declare, and answers the sum of its inputs."""
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse

DECLARED = {"x", "z"}


class StrictModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        names = {i.name for i in payload.inputs}
        unexpected = sorted(names - DECLARED)
        if unexpected:
            raise MLServerError(f"unexpected inference input {unexpected} for model 'strict'", status_code=400)
        total = sum(float(np.sum(NumpyCodec.decode_input(i))) for i in payload.inputs)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("sum", np.array([total], dtype=np.float64))],
        )
