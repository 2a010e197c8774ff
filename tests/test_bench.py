"""The bench entry runs end to end on the tiny preset, writes the JSON the
docs describe, and its byte counts match counts done by hand."""

import json

import pytest

from memkernels import bench


def test_embedding_bag_byte_counts_by_hand():
    # N=10 rows of D=4 fp32, T=2 bags of B=3 int64 indices, 5 distinct rows.
    fwd = 2 * 3 * 4 * 4 + 2 * 3 * (8 + 4) + 2 * 4 * 4  # rows + (index, weight) + out
    assert bench.embedding_bag_bytes(10, 4, 2, 3, 4, 8, 5, "forward") == fwd
    common = 2 * 4 * 4 + 5 * 4 * 4 + 2 * 3 * (8 + 4) + 2 * 3 * 4  # grad_out, value rows, idx+w, grad_w
    assert bench.embedding_bag_bytes(10, 4, 2, 3, 4, 8, 5, "backward_sparse") == common + 5 * 4 * 4
    assert bench.embedding_bag_bytes(10, 4, 2, 3, 4, 8, 5, "backward_dense") == common + 10 * 4 * 4


def test_pk_topk_counts_by_hand():
    # T=2 tokens, H=3 heads, n=10 sub-keys, Dk=4 (half 2), k=5, fp32.
    fwd_bytes = 2 * 3 * 4 * 4 + 3 * 2 * 10 * 2 * 4 + 2 * 3 * 5 * (4 + 8)
    assert bench.pk_topk_counts(2, 3, 10, 4, 5, 4, "forward") == (fwd_bytes, 2 * 2 * 3 * 10 * 4)
    bwd_bytes = 2 * 3 * 5 * 12 + 2 * 3 * 2 * 5 * 2 * 4 + 2 * 2 * 3 * 4 * 4 + 3 * 2 * 10 * 2 * 4
    assert bench.pk_topk_counts(2, 3, 10, 4, 5, 4, "backward") == (bwd_bytes, 4 * 2 * 3 * 2 * 5 * 2)


def test_bench_entry_tiny(tmp_path, capsys):
    result = bench.main(["--preset", "tiny", "--device", "cpu", "--reps", "2", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["preset"] == "tiny"
    assert set(on_disk["ceilings"]) >= {"copy_GBps", "matmul_TFLOPs"}
    assert on_disk["environment"]["device"] == "cpu"
    rows = on_disk["results"]
    impls = {(r["op"], r["impl"], r["part"]) for r in rows}
    assert ("embedding_bag", "memkernels", "forward") in impls
    assert ("embedding_bag", "torch.F.embedding_bag", "forward+backward") in impls
    assert ("pk_topk", "memkernels", "forward+backward") in impls and ("pk_topk", "composite", "forward") in impls
    for r in rows:
        for key in ("op", "case", "shape", "median_s", "bytes", "GBps", "pct_copy", "flops", "TFLOPs",
                    "pct_floor", "speedup", "times_s"):
            assert key in r
        assert r["median_s"] > 0 and len(r["times_s"]) == 2 and r["bytes"] > 0 and r["flops"] > 0
        if r["impl"] == "memkernels":
            base = {"embedding_bag": "torch.F.embedding_bag", "pk_topk": "composite", "layer": "reference",
                    "train_step": "torch_sparse_adam"}[r["op"]]
            assert base in r["speedup"]
    assert result["results"] == rows
    sweeps = on_disk["sweeps"]
    assert {(p["op"], p["param"]) for p in sweeps} == {("embedding_bag", "N"), ("pk_topk", "k")}
    assert {p["value"] for p in sweeps if p["op"] == "embedding_bag"} == {100, 1000}
    assert all(p["median_s"] > 0 for p in sweeps)
    plots = sorted(path.name for path in tmp_path.glob("*.png"))
    assert "embedding_bag_time.png" in plots and "sweep_pk_topk_k.png" in plots and "layer_floor.png" in plots
    for name in plots:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert ("layer", "memkernels", "forward+backward") in impls and ("layer", "reference", "forward") in impls
    steps = {r["impl"] for r in rows if r["op"] == "train_step"}
    assert steps == {"memkernels_fused", "memkernels_sparse", "torch_dense_adamw", "torch_sparse_adam"}
    assert printed.strip().splitlines()[-1].startswith("update_tiny")  # the table comes last


def test_failing_case_is_reported_and_the_rest_still_run(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(bench.RUNNERS, bench.PKCase, broken)
    result = bench.main(["--preset", "tiny", "--device", "cpu", "--reps", "2", "--no-sweeps"])
    assert result["errors"] == ["pk_tiny: RuntimeError: kernel exploded"]
    ops = {r["op"] for r in result["results"]}
    assert ops == {"embedding_bag", "layer", "train_step"}
    assert "FAILED case pk_tiny: RuntimeError: kernel exploded" in capsys.readouterr().out


def test_cases_option_selects_cases():
    result = bench.main(["--preset", "tiny", "--device", "cpu", "--reps", "2", "--no-sweeps", "--cases", "pk_,eb_tiny"])
    assert {r["case"] for r in result["results"]} == {"pk_tiny", "eb_tiny"}
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tiny", "--device", "cpu", "--cases", "nothing_like_this"])


def test_pytest_benchmark_suite_runs_once(tmp_path):
    """Every pytest-benchmark case under bench/ runs (once, untimed) on CPU."""
    import os
    import subprocess
    import sys

    import memkernels

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    # The memkernels this test imported (installed, or the source tree).
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(memkernels.__file__)), env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(root, "bench"), "-q", "--benchmark-disable",
         "-p", "no:cacheprovider", "-k", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert " passed" in res.stdout
