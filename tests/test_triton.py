"""`edgeae triton`: the model repository's config parses as text proto, matches the ONNX graph's IO, and the
graph runs in onnxruntime with a batch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgeae.cli import main
from edgeae.serve.triton import parse_pbtxt


def test_pbtxt_reader():
    cfg = parse_pbtxt('name: "m"  # comment\nmax_batch_size: 4\ninput [ { name: "x" dims: [ 2, 3 ] } ]\n'
                      "dynamic_batching { max_queue_delay_microseconds: 10 }\nkind: KIND_CPU\n")
    assert cfg["name"] == ["m"] and cfg["max_batch_size"] == [4] and cfg["kind"] == ["KIND_CPU"]
    assert cfg["input"][0]["dims"] == [2, 3] and cfg["dynamic_batching"][0]["max_queue_delay_microseconds"] == [10]
    with pytest.raises(ValueError):
        parse_pbtxt("name: {")


@pytest.mark.parametrize("int8", [False, True])
def test_triton_repository_matches_the_graph(tiny_bundle, tmp_path, int8):
    from edgeae.runtime.codec import Decoder

    out = tmp_path / "repo"
    args = ["triton", str(tiny_bundle), "--out", str(out), "--max-batch", "16"] + (["--int8"] if int8 else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (model,) = [p for p in out.iterdir() if p.is_dir()]
    cfg = parse_pbtxt((model / "config.pbtxt").read_text())
    assert cfg["name"] == [model.name] and cfg["platform"] == ["onnxruntime_onnx"] and cfg["max_batch_size"] == [16]
    assert "dynamic_batching" in cfg and cfg["dynamic_batching"][0]["max_queue_delay_microseconds"] == [5000]
    dec = Decoder(tiny_bundle, "int8" if int8 else "fp32")
    m = dec.manifest
    (inp,), (outp,) = cfg["input"], cfg["output"]
    def dims(shape):  # any-size bundles: H and W are -1 in Triton's config, symbolic in the graph
        return [shape[0], -1, -1] if m.input.size_multiple else list(shape)

    assert inp["dims"] == dims(m.latent.shape) and outp["dims"] == dims(m.input.shape)
    assert inp["data_type"] == outp["data_type"] == ["TYPE_FP32"]
    readme = (out / "README.md").read_text()
    assert "entropy" in readme and "before" in readme

    sess = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (gi,), gouts = sess.get_inputs(), sess.get_outputs()
    assert [gi.name] == inp["name"] and outp["name"][0] in [o.name for o in gouts]
    assert [d if isinstance(d, int) else -1 for d in gi.shape[1:]] == inp["dims"]
    assert not isinstance(gi.shape[0], int)  # batch axis is dynamic
    # a batch of 5 through the repository's graph equals the runtime's decode of a 5-item payload
    from edgeae.runtime.codec import Encoder

    payload = Encoder(tiny_bundle).encode(np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8))
    latents = dec.latents(payload)
    (images,) = sess.run(outp["name"], {gi.name: latents})
    assert images.shape == (5, *m.input.shape)
    from edgeae.runtime.images import to_uint8

    assert np.array_equal(to_uint8(images), dec.decode(payload))


def test_triton_refuses_to_overwrite(tiny_bundle, tmp_path):
    args = ["triton", str(tiny_bundle), "--out", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "already exists" in res.output and "Traceback" not in res.output
