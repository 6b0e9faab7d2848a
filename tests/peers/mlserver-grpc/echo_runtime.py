"""An MLServer model for the gRPC peer tests that reports which inputs reached it: each input
comes back as an output of the same name and value. With `declared` in its parameters it is
strict, like Triton and TF Serving: any other input is refused."""
from typing import AsyncIterator

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse


class EchoModel(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        self.declared = set(extra.get("declared", []))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        names = [i.name for i in payload.inputs]
        unexpected = sorted(set(names) - self.declared) if self.declared else []
        if unexpected:
            raise MLServerError(f"unexpected inference input {unexpected} for model '{self.name}'",
                                status_code=400)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(i.name, NumpyCodec.decode_input(i))
                     for i in payload.inputs],
        )

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        # MLModel's default answers the first request of a stream only.
        async for payload in payloads:
            yield await self.predict(payload)
