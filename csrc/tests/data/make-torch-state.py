#!/usr/bin/python3
# Writes torch-state.bin next to this script: a tiny state dict saved by torch.save the way published
# pytorch_model.bin files are (zip archive, protocol-2 data.pkl, storages stored 64-byte aligned), read by
# test-torch-bin. Every value is value(seed + i) for the i-th element of the storage (exact in bf16 and f16), so
# the test recomputes them without this script. Needs PyTorch (Debian: apt-get install python3-torch); CI reads the
# committed file.
import collections
import os

import torch


def value(k):
    return ((k * 7) % 23 - 11) / 8.0


def filled(n, seed, dtype):
    return torch.tensor([value(seed + i) for i in range(n)], dtype=torch.float64).to(dtype)


# A module's state_dict: an OrderedDict with _metadata (pickled as a BUILD), its weight a Parameter when saved
# from the module itself, a plain tensor here.
sd = torch.nn.Linear(3, 2, bias=False).state_dict()
sd["weight"] = filled(6, 0, torch.float32).view(2, 3)
sd["bf16.matrix"] = filled(24, 100, torch.bfloat16).view(4, 6)
sd["f16.vector"] = filled(5, 200, torch.float16)
shared = filled(12, 300, torch.float32)  # one storage, two tensors at offsets 0 and 6
sd["shared.a"] = shared[0:4].view(2, 2)
sd["shared.b"] = shared[6:12].view(2, 3)
rows = filled(12, 400, torch.bfloat16).view(3, 4)  # a row of a matrix: storage offset 4, the whole storage saved
sd["view.row"] = rows[1]
sd["param"] = torch.nn.Parameter(filled(4, 500, torch.float16).view(2, 2), requires_grad=False)
assert isinstance(sd, collections.OrderedDict)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch-state.bin")
torch.save(sd, path)
for name, t in sd.items():
    print(name, str(t.dtype).replace("torch.", ""), list(t.shape), "offset", t.storage_offset(),
          [float(x) for x in t.flatten()])
print("wrote", path, os.path.getsize(path), "bytes, torch", torch.__version__)
