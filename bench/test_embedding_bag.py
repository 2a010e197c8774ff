"""pytest-benchmark cases for memkernels.embedding_bag against
torch.nn.functional.embedding_bag (mode="sum", per_sample_weights) and, on a
GPU with triton, a Triton kernel in the paper's released design
(memkernels.bench.triton_bag), forward and forward+backward, in the same run:

    pytest bench/ --benchmark-group-by=param:case,param:part

CPU runs the quick shape; a GPU also runs the design's reference shapes.
Compare runs with pytest-benchmark's own tools (--benchmark-autosave,
pytest-benchmark compare). `python -m memkernels.bench` reports the same cases
with byte counts and percent of the measured copy bandwidth.
"""

import pytest
import torch

from memkernels import bench
from conftest import DEVICES

CASES = {c.name: c for c in bench.PRESETS["quick"] + bench.PRESETS["paper"] if isinstance(c, bench.EBCase)}


@pytest.fixture(scope="module")
def prepared():
    cache = {}

    def get(case_name, device):
        key = (case_name, device)
        if key not in cache:
            cache.clear()  # one case's tensors at a time
            values, batches = bench.make_inputs(CASES[case_name], torch.device(device), sets=3)
            cache[key] = (values, bench.embedding_bag_impls(values, batches, CASES[case_name]))
        return cache[key]

    return get


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("part", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["memkernels", "torch.F.embedding_bag", "triton_per_bag"])
def test_embedding_bag(benchmark, prepared, device, case, part, impl):
    if device == "cpu" and CASES[case].N > 100_000:
        pytest.skip("reference shapes are GPU-sized")
    values, impls = prepared(case, device)
    if impl not in impls:
        pytest.skip(bench.triton_bag.available(torch.device(device)) or f"{impl} unavailable")
    fn = impls[impl]
    backward = part == "forward+backward"
    calls = iter(range(1 << 30))

    def run():
        fn(next(calls), backward)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{case} {part} {device}"
    benchmark.extra_info.update(case=case, part=part, impl=impl, device=device)
    benchmark.pedantic(run, warmup_rounds=2, rounds=10 if device == "cpu" else 30, iterations=1)
    values.requires_grad_(False)
