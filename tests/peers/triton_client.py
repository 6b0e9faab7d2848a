"""Drives the sidecar with Triton's own Python client (tritonclient.http), nobody here wrote it.

Sends one KServe V2 JSON request and one with Triton's binary tensor extension, both carrying
inputs x (FP32), y (BYTES) and z (FP64), and checks that the client parses the answers.
Usage: triton_client.py HOST:PORT MODEL VERSION
"""
import sys

import numpy as np
import tritonclient.http as httpclient

url, model, version = sys.argv[1:4]
client = httpclient.InferenceServerClient(url=url)

x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
y = np.array([[b"drop", b"me"]], dtype=np.object_)
z = np.array([[0.25, -8.5]], dtype=np.float64)

for binary in (False, True):
    inputs = [
        httpclient.InferInput("x", list(x.shape), "FP32"),
        httpclient.InferInput("y", list(y.shape), "BYTES"),
        httpclient.InferInput("z", list(z.shape), "FP64"),
    ]
    for tensor, data in zip(inputs, (x, y, z)):
        tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("out", binary_data=False)]
    result = client.infer(
        model, inputs, model_version=version, outputs=outputs, request_id=f"peer-{int(binary)}",
        headers={"x-leaf-answer": "v2"},
    )
    out = result.as_numpy("out")
    assert out is not None and out.tolist() == [0.5], out
    print(f"binary={binary}: ok")
