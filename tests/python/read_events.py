"""Reads a run directory's TensorBoard event files with TensorBoard's own reader and prints
what it found as JSON (used by tests/tools_cli.rs): every scalar series, every image's size,
and the hparams plugin's session-start hyper-parameters and experiment metrics."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

run_dir = sys.argv[1]
acc = event_accumulator.EventAccumulator(
    run_dir,
    size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0},
)
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in tags["scalars"]},
    "images": {tag: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(tag)] for tag in tags["images"]},
    "hparams": {},
    "metrics": [],
    "session_end_status": None,
}
for tag, content in acc.PluginTagToContent("hparams").items():
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    kind = data.WhichOneof("data")
    if kind == "session_start_info":
        for name, value in data.session_start_info.hparams.items():
            out["hparams"][name] = getattr(value, value.WhichOneof("kind"))
    elif kind == "experiment":
        out["metrics"] = [m.name.tag for m in data.experiment.metric_infos]
        out["hparam_infos"] = [h.name for h in data.experiment.hparam_infos]
    elif kind == "session_end_info":
        out["session_end_status"] = data.session_end_info.status
print(json.dumps(out))
