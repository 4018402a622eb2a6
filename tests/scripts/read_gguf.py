"""Reads a GGUF file with the `gguf` Python package (llama.cpp's own reader) and prints what
tests/convert.rs checks: the tensor count, the architecture, and per tensor its name, type,
shape and the sum of its dequantized values, one JSON object per line after a header line."""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main(path):
    r = GGUFReader(path)
    arch = r.fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    print(f"tensors {len(r.tensors)} architecture {arch}")
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float64)
        print(json.dumps({
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
            "sum": float(values.sum()),
        }))


if __name__ == "__main__":
    main(sys.argv[1])
