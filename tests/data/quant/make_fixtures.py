#!/usr/bin/env python3
"""Makes the dequantization fixtures of tests/data/quant/ with the `gguf` Python package.

For each type T this writes
  T.q    raw block bytes (4 rows of 512 elements),
  T.f32  what gguf.quants.dequantize makes of them (little-endian f32),
  T.src  for types gguf can quantize: the f32 values that were quantized.
gguf cannot quantize the K-quants, IQ4_NL or IQ4_XS, so their blocks are random bytes with sane
half-precision scales; it has no Q8_K at all, whose fixture follows llama.cpp's
quantize_row_q8_K_ref in numpy. MXFP4 blocks come from gguf's own quantizer, plus one block of
each extreme exponent (0, 1: subnormal halves; 2; 200).

Usage: pip install gguf==0.19.0 numpy && python3 tests/data/quant/make_fixtures.py
"""
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS, COLS = 4, 512
rng = np.random.default_rng(20261123)


def save(name, q, f, src=None):
    q.astype(np.uint8).tofile(os.path.join(HERE, f"{name}.q"))
    f.astype("<f4").tofile(os.path.join(HERE, f"{name}.f32"))
    if src is not None:
        src.astype("<f4").tofile(os.path.join(HERE, f"{name}.src"))


def half_bytes(values):
    return np.asarray(values, dtype="<f2").view(np.uint8).reshape(-1, 2)


# Types gguf quantizes itself: quantize real-looking data, then dequantize.
x = (rng.standard_normal((ROWS, COLS)) * rng.uniform(0.1, 3.0, (ROWS, 1))).astype(np.float32)
x[0, :32] = 0.0  # an all-zero block
for t in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
    q = quantize(x, t)
    raw = q.view(np.uint8).reshape(ROWS, -1)
    save(t.name, raw, dequantize(raw, t).reshape(ROWS, COLS), x)

# K-quants: random blocks whose f16 scale fields hold small positive values.
scale_fields = {  # byte offsets of f16 super-block scales inside each block
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
for t, offs in scale_fields.items():
    _, bs = GGML_QUANT_SIZES[t]
    nb = ROWS * COLS // 256
    blocks = rng.integers(0, 256, size=(nb, bs), dtype=np.uint8)
    for o in offs:
        blocks[:, o:o + 2] = half_bytes(rng.uniform(0.001, 0.05, nb))
    raw = blocks.reshape(ROWS, -1)
    save(t.name, raw, dequantize(raw, t).reshape(ROWS, COLS))

# Q8_K (activation format; gguf has none): llama.cpp's reference quantizer in numpy.
def nearest_int(v):
    return np.rint(v).astype(np.int32)  # round half to even, as the 1.5*2^23 trick does

blocks = []
flat = x.reshape(-1, 256)
for b in flat:
    amax_i = int(np.argmax(np.abs(b)))  # first index of the largest magnitude
    mx = b[amax_i]
    out = np.zeros(292, dtype=np.uint8)
    if np.abs(mx) != 0:
        iscale = np.float32(-127.0) / np.float32(mx)
        qs = np.minimum(127, nearest_int(np.float32(iscale) * b)).astype(np.int8)
        d = np.float32(1.0) / np.float32(iscale)
        out[0:4] = np.frombuffer(np.float32(d).tobytes(), dtype=np.uint8)
        out[4:260] = qs.view(np.uint8)
        bsums = qs.astype(np.int32).reshape(16, 16).sum(axis=1).astype("<i2")
        out[260:292] = bsums.view(np.uint8)
    blocks.append(out)
raw = np.stack(blocks).reshape(ROWS, -1)
deq = []
for blk in np.stack(blocks):
    d = np.frombuffer(blk[0:4].tobytes(), dtype="<f4")[0]
    deq.append(np.float32(d) * blk[4:260].view(np.int8).astype(np.float32))
save("Q8_K", raw, np.stack(deq).reshape(ROWS, COLS), x)

# Table formats (written last, so the fixtures above keep their random draws).
for t, offs in {T.IQ4_NL: [0], T.IQ4_XS: [0]}.items():
    nb_elems, bs = GGML_QUANT_SIZES[t]
    nb = ROWS * COLS // nb_elems
    blocks = rng.integers(0, 256, size=(nb, bs), dtype=np.uint8)
    for o in offs:
        blocks[:, o:o + 2] = half_bytes(rng.uniform(0.001, 0.05, nb))
    raw = blocks.reshape(ROWS, -1)
    save(t.name, raw, dequantize(raw, t).reshape(ROWS, COLS))

q = quantize(x, T.MXFP4).view(np.uint8).reshape(-1, 17).copy()
q[1:5, 0] = [0, 1, 2, 200]  # exponent byte: subnormal halves, smallest normal, a large one
raw = q.reshape(ROWS, -1)
save(T.MXFP4.name, raw, dequantize(raw, T.MXFP4).reshape(ROWS, COLS), x)
print("wrote fixtures to", HERE)
