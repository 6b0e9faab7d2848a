"""A strict MLServer model that declares its inputs in model-settings.json (30 of them): like
Triton and TF Serving it rejects any input it does not declare and any declared input that is
absent, and answers how many inputs it got and their sum."""
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse


class DeclaredModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        declared = {i.name for i in (self.settings.inputs or [])}
        names = [i.name for i in payload.inputs]
        unexpected = sorted(set(names) - declared)
        if unexpected:
            raise MLServerError(
                f"unexpected inference input {unexpected[:3]}"
                f" ({len(unexpected)} unexpected) for model '{self.name}'",
                status_code=400,
            )
        absent = sorted(declared - set(names))
        if absent:
            raise MLServerError(f"missing inference input {absent} for model '{self.name}'", status_code=400)
        total = sum(float(np.sum(NumpyCodec.decode_input(i))) for i in payload.inputs)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("inputs", np.array([len(names)], dtype=np.int64)),
                NumpyCodec.encode_output("sum", np.array([total], dtype=np.float64)),
            ],
        )
