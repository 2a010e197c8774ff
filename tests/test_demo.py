"""The end-to-end demo runs, is reproducible, and the memory model wins."""

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
