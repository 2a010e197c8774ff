"""The bench entry runs end to end on the tiny preset, writes the JSON the
docs describe and the plots, its byte counts match counts done by hand, and
compare judges two runs."""

import copy
import io
import json
import sys

import pytest
import torch

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
    assert on_disk["preset"] == "tiny" and on_disk["reps"] == 2 and on_disk["complete"] is True
    assert set(on_disk["ceilings"]) >= {"copy_GBps", "matmul_TFLOPs"}
    env = on_disk["environment"]
    assert env["device"] == "cpu"
    for key in ("date", "command", "commit", "device_name", "cpu", "driver", "torch", "cuda", "memkernels", "python"):
        assert key in env, key
    assert env["command"] == "python -m memkernels.bench --preset tiny --device cpu --reps 2 --out " + str(tmp_path)
    assert env["memkernels"]["version"] and env["memkernels"]["backends"]
    rows = on_disk["results"]
    impls = {(r["op"], r["impl"], r["part"]) for r in rows}
    assert ("embedding_bag", "memkernels", "forward") in impls
    assert ("embedding_bag", "torch.F.embedding_bag", "forward+backward") in impls
    assert ("pk_topk", "memkernels", "forward+backward") in impls and ("pk_topk", "paper_composite", "forward") in impls
    assert ("pk_topk", "paper_composite_compiled", "forward+backward") in impls
    assert ("pk_topk", "reference_fp32", "forward") in impls
    for r in rows:
        for key in ("op", "case", "shape", "median_s", "bytes", "GBps", "pct_copy", "flops", "TFLOPs",
                    "pct_floor", "speedup", "times_s"):
            assert key in r
        assert r["median_s"] > 0 and len(r["times_s"]) == 2 and r["bytes"] > 0 and r["flops"] > 0
        if r["impl"] == "memkernels":
            base = {"embedding_bag": "torch.F.embedding_bag", "pk_topk": "paper_composite", "layer": "reference",
                    "train_step": "torch_sparse_adam"}[r["op"]]
            assert base in r["speedup"]
    assert result["results"] == rows
    sweeps = on_disk["sweeps"]
    assert {(p["op"], p["param"]) for p in sweeps} == {("embedding_bag", "N"), ("pk_topk", "k")}
    assert {p["value"] for p in sweeps if p["op"] == "embedding_bag"} == {100, 1000}
    assert all(p["median_s"] > 0 and len(p["times_s"]) == 2 and p["shape"][p["param"]] == p["value"]
               for p in sweeps)
    assert {p["shape"]["N"] for p in sweeps if p["op"] == "embedding_bag"} == {100, 1000}
    pictures = sorted(path.name for path in tmp_path.glob("*.png"))
    assert pictures == sorted(["roofline_cpu.png", "speedup_embedding_bag.png", "speedup_pk_topk.png",
                               "speedup_layer.png", "speedup_train_step.png", "sweep_embedding_bag_N.png",
                               "sweep_pk_topk_k.png"])
    assert sorted(result["plots"]) == sorted(str(tmp_path / name) for name in pictures)
    for name in pictures:
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


def test_without_matplotlib_the_json_is_still_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = bench.main(["--preset", "tiny", "--device", "cpu", "--reps", "2", "--no-sweeps", "--cases", "eb_",
                         "--out", str(tmp_path)])
    assert result["plots"] == [] and not list(tmp_path.glob("*.png"))
    assert json.loads((tmp_path / "bench.json").read_text())["results"]
    assert "plots need matplotlib: pip install 'memkernels[plot]'" in capsys.readouterr().out


def test_progress_line_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        progress = bench.Progress(stream)
        progress.prefix = "case 2/5: "
        progress.show("eb_cpu memkernels forward")
        progress.clear()
    assert "case 2/5: eb_cpu memkernels forward" in tty.getvalue() and tty.getvalue().endswith("\r\033[K")
    assert pipe.getvalue() == ""


def _run(times_by_key, shape_n=1000, device="cpu A"):
    rows = []
    for (case, impl, part), times in times_by_key.items():
        times = sorted(times)
        rows.append({"op": "embedding_bag", "case": case, "impl": impl, "part": part, "median_s": times[len(times) // 2],
                     "times_s": times, "shape": {"name": case, "N": shape_n, "D": 8}})
    return {"environment": {"device_name": device}, "results": rows}


def test_compare_ratios_flags_and_refusals(tmp_path, capsys):
    a = _run({("eb", "memkernels", "forward"): [1.0, 1.0, 1.0, 1.1, 0.9],
              ("eb", "torch", "forward"): [2.0, 2.0, 2.1, 1.9, 2.0],
              ("eb", "memkernels", "forward+backward"): [3.0, 3.0, 3.0, 3.0, 3.0],
              ("eb", "reference", "forward"): [5.0, 5.0, 5.0]})
    b = _run({("eb", "memkernels", "forward"): [0.5, 0.5, 0.5, 0.55, 0.45],   # 2x faster
              ("eb", "torch", "forward"): [2.2, 1.6, 2.6, 1.8, 2.4],          # 1.1x slower, within the noise
              ("eb", "memkernels", "forward+backward"): [3.6, 3.6, 3.6, 3.6, 3.6],  # 1.2x slower: regression
              ("eb", "pk", "forward"): [1.0, 1.0]}, device="cpu B")
    c = bench.compare(a, b, threshold=0.05)
    by_key = {(r["impl"], r["part"]): r for r in c["rows"]}
    assert by_key[("memkernels", "forward")]["ratio"] == pytest.approx(0.5)
    assert not by_key[("memkernels", "forward")]["regression"]
    assert by_key[("torch", "forward")]["ratio"] == pytest.approx(1.1)
    assert by_key[("torch", "forward")]["within_noise"] and not by_key[("torch", "forward")]["regression"]
    assert by_key[("memkernels", "forward+backward")]["ratio"] == pytest.approx(1.2)
    assert by_key[("memkernels", "forward+backward")]["regression"]
    assert by_key[("memkernels", "forward")]["spread_a"] == pytest.approx(0.0)
    assert c["only_a"] == [("embedding_bag", "eb", "reference", "forward")]
    assert c["only_b"] == [("embedding_bag", "eb", "pk", "forward")]
    assert c["regressions"] == ["eb memkernels forward+backward: 1.200x the time (3000 -> 3600 ms)"]

    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    out = bench.main(["compare", str(pa), str(pb), "--out", str(tmp_path / "cmp")])
    assert out["errors"] == c["regressions"]
    printed = capsys.readouterr().out
    assert "1.200  REGRESSION" in printed and "only in A: eb reference forward" in printed
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"

    other = copy.deepcopy(b)
    for r in other["results"]:
        r["shape"]["N"] = 2000
    with pytest.raises(bench.ShapeMismatch, match=r"case eb: N 1000 vs 2000"):
        bench.compare(a, other)
    pb.write_text(json.dumps(other))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["compare", str(pa), str(pb)])
    assert exit_info.value.code == 2
    assert "refused: the runs' shapes differ: case eb: N 1000 vs 2000" in capsys.readouterr().err


def test_paper_style_pk_topk_baseline_selects_what_the_oracle_does():
    """The speed baseline is the same selection: in fp32 with random inputs
    (no ties) its scores and slot ids are the oracle's, eager and compiled;
    in bf16 it keeps the inputs' dtype."""
    from memkernels import reference
    from memkernels.bench.baselines import compiled, pk_topk_paper_style

    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 3, 16, generator=g, dtype=torch.float64)
    keys = torch.randn(3, 2, 50, 8, generator=g, dtype=torch.float64)
    want_s, want_i = reference.pk_topk(q, keys, 7)
    for fn in (pk_topk_paper_style, compiled(pk_topk_paper_style)):
        s, i = fn(q, keys, 7)
        assert torch.equal(i, want_i)
        torch.testing.assert_close(s, want_s.to(s.dtype))
    s, i = pk_topk_paper_style(q.to(torch.bfloat16), keys.to(torch.bfloat16), 7)
    assert s.dtype == torch.bfloat16 and i.dtype == torch.int64 and i.shape == (37, 3, 7)


@pytest.mark.skipif(__import__("importlib").util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_baseline_computes_the_embedding_bag_and_its_gradients(tmp_path):
    """The bench's Triton baseline (the paper's released design), run by
    Triton's interpreter on the CPU: forward, the dense values' gradient
    (untouched rows zero, a hot row) and the weights' gradient against the
    reference, for fp32 and bf16 values and weights."""
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import torch
        from memkernels import reference
        from memkernels.bench import triton_bag
        assert triton_bag.available(torch.device("cpu")) is None
        for dtype, wdtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                              (torch.float32, torch.bfloat16)):
            g = torch.Generator().manual_seed(0)
            N, D, T, B = 40, 24, 7, 5
            v = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
            idx = torch.randint(0, N, (T, B), generator=g)
            idx[:, 0] = 3
            w = torch.randn(T, B, generator=g).to(wdtype).requires_grad_()
            go = torch.randn(T, D, generator=g).to(dtype)
            out = triton_bag.embedding_bag(v, idx, w)
            gv, gw = torch.autograd.grad(out, (v, w), go)
            v2, w2 = v.detach().float().requires_grad_(), w.detach().float().requires_grad_()
            ref = reference.embedding_bag(v2, idx, w2)
            rgv, rgw = torch.autograd.grad(ref, (v2, w2), go.float())
            exact = dtype == torch.float32 and wdtype == torch.float32
            tol = dict(rtol=1e-5, atol=1e-5) if exact else dict(rtol=2e-2, atol=2e-2)
            assert out.dtype == dtype and gv.dtype == dtype and gw.dtype == wdtype
            torch.testing.assert_close(out.float(), ref, **tol)
            torch.testing.assert_close(gv.float(), rgv, **tol)
            torch.testing.assert_close(gw.float(), rgw, **tol)
            assert (rgv.abs().sum(1) == 0).any() and torch.equal(gv[rgv.abs().sum(1) == 0].float().abs().sum(), torch.tensor(0.0))
        print("ok")
    """)
    env = dict(__import__("os").environ, TRITON_INTERPRET="1")
    # Run outside the checkout, so that the installed package is imported.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    from memkernels.bench import triton_bag

    if not torch.cuda.is_available():
        assert "CUDA" in triton_bag.available(torch.device("cpu"))


def test_a_run_stopped_midway_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    """bench.json is written after every case (complete: false) so that a run
    killed by a time limit (the GPU check's) keeps its numbers."""
    from memkernels.bench import cli

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # the run stops during its second case

    monkeypatch.setitem(cli.RUNNERS, bench.PKCase, stop)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--preset", "tiny", "--device", "cpu", "--reps", "2", "--no-sweeps", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["complete"] is False
    assert {r["op"] for r in on_disk["results"]} == {"embedding_bag"}  # the first case, finished
    assert on_disk["environment"]["device"] == "cpu"
