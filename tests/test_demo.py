"""The end-to-end demo runs, is reproducible, and the memory model wins."""

import pytest
import torch.distributed as dist

from memkernels import demo


def test_demo_memory_model_wins(capsys):
    args = ["--facts", "256", "--epochs", "30", "--batch", "128", "--seed", "3"]
    first = demo.main(args)
    out = capsys.readouterr().out
    assert "recall" in out and "FLOPs/token" in out
    assert first["memory"]["recall"] > first["dense"]["recall"] + 0.2
    assert abs(first["memory"]["flops"] / first["dense"]["flops"] - 1) < 0.05  # same FLOPs budget
    again = demo.main(args)
    assert again["memory"]["recall"] == first["memory"]["recall"]
    assert again["dense"]["recall"] == first["dense"]["recall"]


def test_demo_sharded_over_two_processes_reaches_the_same_recall(capsys):
    if not dist.is_available():
        pytest.skip("torch built without torch.distributed")
    args = ["--facts", "256", "--epochs", "30", "--batch", "128", "--seed", "3"]
    single = demo.main(args)["memory"]
    sharded = demo.main(args + ["--world-size", "2"])["memory"]
    out = capsys.readouterr().out
    assert "2 column shards" in out
    assert sharded["world_size"] == 2 and sharded["params"] == single["params"]
    assert sharded["recall"] >= single["recall"] - 0.03
