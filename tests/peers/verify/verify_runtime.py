"""A lenient MLServer model for the shadow-verification tests: unlike the strict peer it ignores
inputs it does not use (as feature converters and many V2 models do), so it accepts the root's
untrimmed request too. Its score is the weighted sum of the inputs named in `extra.uses`; with
`extra.noise` it adds uniform noise in [-noise, noise] (a non-deterministic leaf).

With `extra.gate`, a request carrying the input named by `gate` (the untrimmed original, in the
tests) waits until a request with an input `open_gate` arrives: shadow requests are then held at
the leaf as long as the test wants, and the response `parameters` report how many such requests
were held at once at most and how many arrived (`held_max`, `held_seen`)."""
import asyncio
import random

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, Parameters


class ScoreModel(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        self.uses = extra.get("uses", {})
        self.noise = float(extra.get("noise", 0.0))
        self.gate_input = extra.get("gate")
        self.gate = asyncio.Event()
        self.held = 0
        self.held_max = 0
        self.held_seen = 0
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        names = {i.name for i in payload.inputs}
        if "open_gate" in names:
            self.gate.set()
        if self.gate_input and self.gate_input in names:
            self.held += 1
            self.held_seen += 1
            self.held_max = max(self.held_max, self.held)
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
        score = 0.0
        for i in payload.inputs:
            weight = self.uses.get(i.name)
            if weight is not None:
                score += weight * float(np.sum(NumpyCodec.decode_input(i)))
        if self.noise:
            score += random.uniform(-self.noise, self.noise)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            parameters=Parameters(held_max=self.held_max, held_seen=self.held_seen),
            outputs=[NumpyCodec.encode_output("score", np.array([score], dtype=np.float64))],
        )
