"""Loads an `sslc export --format torchvision` file of a ResNet-18 (CIFAR stem) into
torchvision, runs it on the images `sslc embed --images` embedded, and prints the largest
difference from sslc's features as JSON (used by tests/tools_cli.rs). Reads safetensors with
numpy alone, so only torch, torchvision and numpy are needed."""
import json
import struct
import sys

import numpy as np
import torch
import torchvision

weights_path, images_path, features_path = sys.argv[1:4]

DTYPES = {"F32": np.float32, "I64": np.int64}
with open(weights_path, "rb") as f:
    raw = f.read()
(header_len,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + header_len])
data = raw[8 + header_len :]
state = {}
for name, info in header.items():
    if name == "__metadata__":
        continue
    start, end = info["data_offsets"]
    array = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    state[name] = torch.from_numpy(array.copy())

images = torch.from_numpy(np.load(images_path))
model = torchvision.models.resnet18()
model.conv1 = torch.nn.Conv2d(images.shape[1], 64, kernel_size=3, stride=1, padding=1, bias=False)
model.maxpool = torch.nn.Identity()
result = model.load_state_dict(state, strict=False)
model.fc = torch.nn.Identity()
model.eval()
with torch.no_grad():
    features = model(images).numpy()
expected = np.load(features_path)
print(json.dumps({
    "missing": sorted(result.missing_keys),
    "unexpected": sorted(result.unexpected_keys),
    "shape": list(features.shape),
    "max_abs_diff": float(np.abs(features - expected).max()),
    "max_abs": float(np.abs(expected).max()),
}))
