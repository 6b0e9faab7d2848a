"""Real gRPC peers for tests/grpc.rs. Prints one JSON report on stdout; the Rust test asserts.

  grpc_peers.py tfs SIDECAR LEAF_PORT
      Stands in for TF Serving (no TF Serving server can be installed here): a recording grpcio
      leaf on 127.0.0.1:LEAF_PORT that keeps the raw bytes of every request and decodes them
      with stubs generated from tests/peers/grpc/tf_serving.proto (written for the tests from
      the field numbers in PROTOCOLS.md). A grpcio client built from the same .proto sends
      Predict, Classify and Regress through the sidecar at SIDECAR.

  grpc_peers.py kserve SIDECAR MLSERVER_GRPC
      Triton's real gRPC client (tritonclient.grpc) against MLServer 1.7.1 through the sidecar
      and directly; ModelStreamInfer with MLServer's own stubs (its stream answers are bare
      ModelInferResponses, not Triton's ModelStreamInferResponse).
"""
import json
import os
import sys
import tempfile
import threading
from concurrent import futures

import grpc
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def tf_serving_stubs():
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="tfs-stubs-")
    rc = protoc.main(["protoc", f"-I{HERE}/grpc", f"--python_out={out}",
                      f"--grpc_python_out={out}", "tf_serving.proto"])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    import tf_serving_pb2
    import tf_serving_pb2_grpc
    return tf_serving_pb2, tf_serving_pb2_grpc


def code_of(error):
    return {"code": error.code().name, "details": error.details()}


# ---------------------------------------------------------------- TF Serving stand-in

def tfs(sidecar, leaf_port):
    pb, pbg = tf_serving_stubs()
    seen = []  # (method, raw bytes) as the leaf received them
    lock = threading.Lock()

    def examples_of(inp):
        kind = inp.WhichOneof("kind")
        if kind == "example_list":
            return list(inp.example_list.examples), None
        return (list(inp.example_list_with_context.examples),
                inp.example_list_with_context.context)

    def handler(method):
        def handle(raw, context):
            with lock:
                seen.append((method, raw))
            if method == "Predict":
                request = pb.PredictRequest.FromString(raw)
                answer = pb.PredictResponse(model_spec=request.model_spec)
                for key, tensor in request.inputs.items():
                    answer.outputs[key].CopyFrom(tensor)
                return answer.SerializeToString()
            if method == "Classify":
                request = pb.ClassificationRequest.FromString(raw)
                answer = pb.ClassificationResponse(model_spec=request.model_spec)
                examples, _ = examples_of(request.input)
                for example in examples:
                    classes = answer.result.classifications.add()
                    for key in sorted(example.features.feature):
                        classes.classes.add(label=key, score=1.0)
                return answer.SerializeToString()
            request = pb.RegressionRequest.FromString(raw)
            answer = pb.RegressionResponse(model_spec=request.model_spec)
            examples, _ = examples_of(request.input)
            for example in examples:
                total = sum(sum(f.float_list.value) for f in example.features.feature.values())
                answer.result.regressions.add(value=total)
            return answer.SerializeToString()
        return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {m: handler(m) for m in ("Predict", "Classify", "Regress")})])
    server.add_insecure_port(f"127.0.0.1:{leaf_port}")
    server.start()

    report = {}
    channel = grpc.insecure_channel(sidecar)
    stub = pbg.PredictionServiceStub(channel)

    def tensor(values):
        t = pb.TensorProto(dtype=1)
        t.tensor_shape.dim.add(size=len(values))
        t.float_val.extend(values)
        return t

    def predict_request(model, version=None, label=None):
        request = pb.PredictRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        request.model_spec.signature_name = "serving_default"
        for i, key in enumerate(["a", "x", "b", "z", "c"]):
            request.inputs[key].CopyFrom(tensor([float(i)] * (i + 1)))
        request.output_filter.append("score")
        return request

    def last_seen():
        with lock:
            return seen[-1]

    def predict_case(request, **kwargs):
        answer = stub.Predict(request, timeout=10, **kwargs)
        method, raw = last_seen()
        received = pb.PredictRequest.FromString(raw)
        return {
            "leaf_keys": sorted(received.inputs),
            "answer_keys": sorted(answer.outputs),
            # Kept tensors arrive exactly as the client wrote them.
            "kept_equal": all(received.inputs[k] == request.inputs[k] for k in received.inputs),
            "spec_equal": received.model_spec == request.model_spec
            and list(received.output_filter) == list(request.output_filter),
            "sent_bytes": len(request.SerializeToString()),
            "leaf_bytes": len(raw),
        }

    report["predict"] = predict_case(predict_request("tfs_m", version=1))
    report["predict_label"] = predict_case(predict_request("tfs_m", label="stable"))
    report["predict_gzip"] = predict_case(predict_request("tfs_m", version=1),
                                          compression=grpc.Compression.Gzip)
    # A miss (no bundle names the model) reaches the leaf byte-identical.
    miss = predict_request("unbundled", version=1).SerializeToString()
    raw_predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                      request_serializer=None, response_deserializer=None)
    raw_predict(miss, timeout=10)
    report["miss_identical"] = last_seen()[1] == miss

    def example(values):
        e = pb.Example()
        for key, value in values.items():
            e.features.feature[key].float_list.value.append(value)
        return e

    classify = pb.ClassificationRequest()
    classify.model_spec.name = "tfs_m"
    classify.model_spec.version.value = 1
    for n in range(3):
        classify.input.example_list.examples.append(
            example({"a": 1.0, "x": 2.0 + n, "b": 3.0, "z": 4.0, "c": 5.0}))
    answer = stub.Classify(classify, timeout=10)
    received = pb.ClassificationRequest.FromString(last_seen()[1])
    report["classify"] = {
        "leaf_features": [sorted(e.features.feature) for e in received.input.example_list.examples],
        "answer_labels": [[c.label for c in cl.classes] for cl in answer.result.classifications],
        "x_values": [e.features.feature["x"].float_list.value[0]
                     for e in received.input.example_list.examples],
    }

    regress = pb.RegressionRequest()
    regress.model_spec.name = "tfs_m"
    regress.model_spec.version.value = 1
    with_context = regress.input.example_list_with_context
    with_context.context.CopyFrom(example({"a": 100.0, "z": 10.0}))
    for n in range(2):
        with_context.examples.append(example({"x": 1.0 + n, "b": 1000.0}))
    answer = stub.Regress(regress, timeout=10)
    received = pb.RegressionRequest.FromString(last_seen()[1])
    kept = received.input.example_list_with_context
    report["regress"] = {
        "leaf_context": sorted(kept.context.features.feature),
        "leaf_features": [sorted(e.features.feature) for e in kept.examples],
        "answer_values": [r.value for r in answer.result.regressions],
    }

    # A model routed to an HTTP/1.1-only cluster: the sidecar's own UNAVAILABLE.
    try:
        stub.Predict(predict_request("h1_model", version=1), timeout=10)
        report["h1_cluster"] = {"code": "OK"}
    except grpc.RpcError as e:
        report["h1_cluster"] = code_of(e)

    report["leaf_calls"] = len(seen)
    channel.close()
    server.stop(0)
    return report


# ---------------------------------------------------------------- KServe V2 with MLServer

def kserve(sidecar, mlserver):
    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2 as pb

    # Dropped inputs sit at the start, the middle and the end, each with a size of its own: a
    # raw entry handed to the wrong input makes MLServer fail.
    def inputs(names):
        arrays = {
            "d0": np.arange(7, dtype=np.float64),
            "x": np.array([1.5, 2.5, 3.5], dtype=np.float32),
            "d1": np.arange(11, dtype=np.int64),
            "z": np.array([[7, 8], [9, 10]], dtype=np.int32),
            "d2": np.arange(5, dtype=np.float32),
        }
        dtypes = {np.float64: "FP64", np.float32: "FP32", np.int64: "INT64", np.int32: "INT32"}
        out = []
        for name in names:
            array = arrays[name]
            i = triton.InferInput(name, list(array.shape), dtypes[array.dtype.type])
            i.set_data_from_numpy(array)
            out.append(i)
        return out

    def outputs(result):
        answer = result.get_response()
        values = {o.name: result.as_numpy(o.name).tolist() for o in answer.outputs}
        values["order"] = [o.name for o in answer.outputs]
        return values

    everything = ["d0", "x", "d1", "z", "d2"]
    report = {}
    via = triton.InferenceServerClient(sidecar)
    direct = triton.InferenceServerClient(mlserver)

    try:
        direct.infer("strict", inputs(everything), model_version="1")
        report["direct_full"] = {"code": "OK"}
    except triton.InferenceServerException as e:
        report["direct_full"] = {"code": e.status(), "details": e.message()}
    report["direct_allowed"] = outputs(direct.infer("strict", inputs(["x", "z"]), model_version="1"))
    report["via_sidecar"] = outputs(via.infer("strict", inputs(everything), model_version="1"))
    report["via_sidecar_gzip"] = outputs(via.infer("strict", inputs(everything), model_version="1",
                                                   compression_algorithm="gzip"))
    # A miss: no bundle names `lenient`, which echoes whatever arrives.
    report["miss"] = outputs(via.infer("lenient", inputs(everything), model_version="1"))

    # ModelStreamInfer: several requests on one stream, each trimmed on its own. MLServer
    # answers a stream with bare ModelInferResponses (Triton's client expects its own
    # ModelStreamInferResponse), so the stream goes raw and answers are decoded as such.
    # (MLServer's own stubs cannot be imported beside tritonclient's: both register the
    # `inference` package in protobuf's default pool.)
    channel = grpc.insecure_channel(sidecar)
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                   request_serializer=None, response_deserializer=None)

    def stream_requests():
        for n in range(3):
            request = pb.ModelInferRequest(model_name="strict", model_version="1", id=f"s-{n}")
            for name in everything:
                array = np.full(3 + n if name == "x" else 2, n, dtype=np.float32)
                request.inputs.add(name=name, datatype="FP32", shape=[len(array)])
                request.raw_input_contents.append(array.tobytes())
            yield request.SerializeToString()

    answers = []
    for raw in stream(stream_requests(), timeout=30):
        answer = pb.ModelInferResponse.FromString(raw)
        x = [o for o in answer.outputs if o.name == "x"]
        answers.append({"outputs": [o.name for o in answer.outputs],
                        "x_len": x[0].shape[0] if x else None})
    report["stream"] = answers
    channel.close()
    return report


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    result = {"tfs": tfs, "kserve": kserve}[mode](args[0], args[1])
    print(json.dumps(result))
